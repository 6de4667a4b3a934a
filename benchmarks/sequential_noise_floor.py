"""
How far fixed-n CERTIFY disagrees with itself: the yardstick for "certified accuracy within 0.5 points".

Sequential CERTIFY and fixed n draw different noise, so an input whose pA sits at a certification threshold can be
certified by one and not by the other. This script asks how much of that is chance even between two fixed-n runs:
for each input of a ``sequential_digits.py`` result, with fixed n's estimate of pA taken as the truth, the probability
q that a fresh fixed-n run (same n and alpha) certifies radius r is P(Binomial(n, pA) >= k_r), where k_r is the
smallest count whose Clopper-Pearson lower bound reaches Phi(r / sigma). Two independent runs then differ in
certified accuracy at r by a standard deviation of sqrt(2 sum q (1 - q)) / inputs. Labels are not in the results, so
every input counts (an overestimate only where a misclassified input sits at a threshold).

    python benchmarks/sequential_noise_floor.py benchmarks/results/sequential_digits_360_*.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import binom, norm

sys.path.insert(0, str(Path(__file__).parents[1]))
from art_some.core.stats import clopper_pearson_lower  # noqa: E402

RADII = [0.25, 0.5, 0.75, 1.0]


def smallest_certifying_count(n: int, alpha: float, threshold: float) -> int | None:
    """The least k with a Clopper-Pearson lower bound at alpha of at least ``threshold`` (None: not even k = n)."""
    k = np.arange(n + 1)
    lower = clopper_pearson_lower(k, np.full_like(k, n), alpha)
    hits = np.nonzero(lower >= threshold)[0]
    return int(hits[0]) if len(hits) else None


def floor_rows(p_hat: np.ndarray, sigma: float, n: int, alpha: float) -> list[dict]:
    """Per radius: inputs whose certification is a coin flip (5% < q < 95%) and the SD of two runs' difference."""
    rows = []
    for r in RADII:
        k = smallest_certifying_count(n, alpha, float(norm.cdf(r / sigma)))
        q = np.zeros_like(p_hat) if k is None else binom.sf(k - 1, n, p_hat)
        rows.append({"radius": r, "coin_flips": int(np.sum((q > 0.05) & (q < 0.95))),
                     "sd_points": round(100 * float(np.sqrt(2 * np.sum(q * (1 - q)))) / len(p_hat), 2)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="outputs of sequential_digits.py")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:  # every file checked before any row is printed
        result = json.loads(Path(path).read_text())
        if not isinstance(result, dict) or not {"settings", "points"} <= result.keys():
            parser.error(f"results: {path} is not an output of sequential_digits.py (no 'settings' and 'points')")
        results.append(result)
    print("| model | sigma | inputs | r | coin-flip inputs | SD of two fixed-n runs (points) |")
    print("|---|---|---|---|---|---|")
    for result in results:
        settings = result["settings"]
        for point in result["points"]:
            p_hat = np.asarray(point["pA"], dtype=np.float64)
            for row in floor_rows(p_hat, point["sigma"], settings["n"], settings["alpha"]):
                print(f"| {point['method']} | {point['sigma']:g} | {len(p_hat)} | {row['radius']:g} | "
                      f"{row['coin_flips']} | {row['sd_points']:.2f} |")

if __name__ == "__main__":
    main()
