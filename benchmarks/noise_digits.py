"""
Noise families on the embedded digits, the miniature of Yang et al.'s L1 comparison: a DigitsCNN trained with
noise augmentation in each family (Gaussian, Laplace, uniform, each at the same standard deviation sigma, as Yang et
al. compare them), certified with the same family, certified accuracy against the L1 radius and the L1 ACR.

    python benchmarks/noise_digits.py --output benchmarks/results/noise_digits.json
    python benchmarks/noise_digits.py --quick          # a smoke run (1 epoch, n = 1,000, 30 test digits)

Gaussian noise's L1 radius is its L2 radius (an L1 ball lies in the L2 ball of the same radius); Laplace's is Teng
et al.'s, uniform's Yang et al.'s.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
FAMILIES = ("gaussian", "laplace", "uniform")


def run(family: str, sigma: float, args) -> dict:
    from art_some import SmoothedClassifier
    from art_some.data import digits_arrays
    from art_some.models import DigitsCNN
    from art_some.trainers import GaussianAugmentationTrainer

    (x, y), (x_test, y_test) = digits_arrays("train"), digits_arrays("test")
    torch.manual_seed(0)
    model = DigitsCNN()
    clf = SmoothedClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu",
                             optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0),
                             scale=sigma, noise=family, sample_size=100, noise_batch_size=10_000)
    began = time.perf_counter()
    GaussianAugmentationTrainer(clf, seed=0).fit(x, y, batch_size=64, nb_epochs=args.epochs)
    trained = time.perf_counter() - began
    x_test, y_test = x_test[::args.skip], y_test[::args.skip]
    began = time.perf_counter()
    result = clf.certify_detailed(x_test, n=args.n)
    correct = (result.predict == y_test) & (result.predict >= 0)
    return {
        "noise": family, "sigma": sigma, "norm": result.extra["norm"], "inputs": len(y_test), "n": args.n,
        "certified_accuracy_l1": {f"{r:g}": round(100 * float(np.mean(correct & (result.radius >= r))), 1)
                                  for r in RADII},
        "acr_l1": round(float(np.mean(np.where(correct, result.radius, 0.0))), 3),
        "max_radius": round(float(result.radius.max()), 3),
        "train_seconds": round(trained, 1), "certify_seconds": round(time.perf_counter() - began, 1),
    }


def table(rows) -> str:
    lines = ["| noise | sigma | " + " | ".join(f"r={r:g}" for r in RADII) + " | L1 ACR |",
             "|---|---|" + "---|" * (len(RADII) + 1)]
    for row in rows:
        acc = row["certified_accuracy_l1"]
        lines.append(f"| {row['noise']} | {row['sigma']:g} | " + " | ".join(f"{acc[f'{r:g}']:.1f}" for r in RADII)
                     + f" | {row['acr_l1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sigmas", default="0.25,0.5")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--skip", type=int, default=2, help="certify every skip-th test digit")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.n, args.skip = 1, 1000, 12
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [run(family, float(sigma), args) for sigma in args.sigmas.split(",") for family in FAMILIES]
    print(table(rows))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
