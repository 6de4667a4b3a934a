"""
Sequential CERTIFY on binomial counts (no model): the expected estimation draws to decide "certified at r", and the
share of inputs certified, against the true pA, for fixed n and each sequential bound. The votes of an input are
Bernoulli(pA) for the class it certifies, so only the statistics are measured, over many simulated inputs.

    PYTHONPATH=. .venv/bin/python benchmarks/sequential_simulation.py \
        --output benchmarks/results/sequential_simulation.md
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import norm

from art_some.core.noise import GaussianNoise
from art_some.core.rules import CohenRule, Tally
from art_some.core.sequential import (
    DEFAULT_GROWTH,
    DEFAULT_START,
    CertifyStops,
    SequenceBounds,
    check_radii,
    draw_schedule,
    run_rounds,
    thresholds_for,
)
from art_some.core.stats import certifies, clopper_pearson_lower

VARIANTS = {  # name: (bound, spending)
    "union-CP, uniform": ("union-cp", "uniform"),
    "union-CP, end-weighted": ("union-cp", "end"),
    "mixture": ("mixture", "end"),
    "betting": ("betting", "end"),
}


def simulate(p_a: float, *, sigma: float, radius: float, n: int, alpha: float, trials: int, bound: str,
             spending: str, start: int, growth: float | None, seed: int = 0):
    """Mean estimation draws and the share certified at ``radius`` over ``trials`` inputs with true ``p_a``."""
    rng = np.random.default_rng(seed)
    rule, noise, radii = CohenRule(), GaussianNoise(sigma), check_radii([radius])
    schedule = draw_schedule(n, start, growth, bound)
    bounds = SequenceBounds(rule, bound, alpha, schedule, thresholds_for(rule, noise, radii, trials),
                            num_inputs=trials, spending=spending)

    def draw(rounds, active, nums):
        hits = rng.binomial(nums, p_a)
        return Tally(np.stack([nums - hits, hits], axis=1), nums)

    def radius_of(p, active):
        return np.where(certifies(p), rule.radius(p, noise), -1.0)

    stops = CertifyStops(bounds, np.ones(trials, dtype=np.int64), radius_of, radii, 0.0)
    _, _, draws, _ = run_rounds(draw, schedule, trials, 2, stops)
    return draws.mean(), float(np.mean(rule.radius(stops.best, noise) >= radius))


def fixed_n(p_a, *, sigma, radius, n, alpha, trials, seed=0):
    hits = np.random.default_rng(seed).binomial(n, p_a, size=trials)
    return float(n), float(np.mean(sigma * norm.ppf(clopper_pearson_lower(hits, n, alpha)) >= radius))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--start", type=int, default=DEFAULT_START)
    parser.add_argument("--growth", type=float, default=DEFAULT_GROWTH, help="Default: each bound's own.")
    parser.add_argument("--output", default=None, help="Write the Markdown table here too.")
    args = parser.parse_args(argv)
    cases = [(0.25, 0.25, p) for p in (0.9, 0.95, 0.99)] + [(0.25, 0.5, p) for p in (0.99, 0.999)] + \
            [(0.25, 0.75, p) for p in (0.999, 0.9995, 0.9999, 1.0)] + [(0.5, 0.5, p) for p in (0.9, 0.95, 0.99)]
    head = ["sigma", "r", "threshold Phi(r/sigma)", "pA", "fixed n"] + list(VARIANTS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    began = time.time()
    for sigma, radius, p_a in cases:
        options = dict(sigma=sigma, radius=radius, n=args.n, alpha=args.alpha, trials=args.trials)
        cells = []
        for draws, share in [fixed_n(p_a, **options)] + [
                simulate(p_a, **options, bound=b, spending=s, start=args.start, growth=args.growth)
                for b, s in VARIANTS.values()]:
            cells.append(f"{draws:,.0f} ({100 * share:.0f}%)")
        lines.append(f"| {sigma} | {radius} | {norm.cdf(radius / sigma):.5f} | {p_a} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    note = (f"\nMean estimation draws per input to decide \"certified at r\" (share certified), n = {args.n:,}, "
            f"alpha = {args.alpha}, {args.trials} simulated inputs per row, start {args.start}, growth "
            f"{args.growth or 'of each bound'}; {time.time() - began:.0f} s.\n")
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n" + note)
    print(note)


if __name__ == "__main__":
    main()
