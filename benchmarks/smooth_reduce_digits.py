"""
Smooth-Reduce on the embedded digits, a miniature of the paper's CIFAR-10 setting: a Gaussian-trained base CNN
(8x8 inputs), the image resized 8 -> 10 before the noise (the paper: 32 -> 36) and P = 9 crops of 8x8 (every
offset), certified as the plain smoothed base classifier, Smooth-Max and Smooth-Mean in the sound modes (shared
noise; independent noise with the sqrt(m_max) correction; the vote-averaged Smooth-Mean with an empirical-Bernstein
bound), and for reference the paper's uncorrected rule (unsound). Radii are in the 8x8 input space (divided by
the resize norm) except the paper's rule, reported as the paper does, in the resized space.

    python benchmarks/smooth_reduce_digits.py                  # sigma 0.25, n = 2000, every 2nd test digit
    python benchmarks/smooth_reduce_digits.py --sigma 0.5 --n 10000 --skip 1
    python benchmarks/smooth_reduce_digits.py --crop-augment   # base also trained on crops of the 10x10 image
    python benchmarks/smooth_reduce_digits.py --quick          # a smoke run

``--crop-augment`` mirrors the paper's base models, which were trained with random-crop augmentation: each training
digit is used as is and as 2 random 8x8 crops of its 10x10 resize, so the base model knows the patches' framing.

Writes ``benchmarks/results/smooth_reduce_digits_s<sigma>.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
PATCHES = {"layout": "grid", "size": 8, "stride": 1}


def configurations():
    """(name, estimator name, options) for every row of the table."""
    common = {"patches": PATCHES, "resize": 10}
    return [
        ("base (Cohen)", "smoothed", {}),
        ("Smooth-Max, shared", "smooth_reduce", {**common, "aggregation": "max"}),
        ("Smooth-Mean, shared", "smooth_reduce", {**common, "aggregation": "mean"}),
        ("Smooth-Max, independent / sqrt(m_max)", "smooth_reduce",
         {**common, "aggregation": "max", "noise_mode": "independent"}),
        ("Smooth-Mean, independent / sqrt(m_max)", "smooth_reduce",
         {**common, "aggregation": "mean", "noise_mode": "independent"}),
        ("vote-averaged Smooth-Mean, independent, Bernstein", "smooth_reduce",
         {**common, "noise_mode": "independent", "certificate": "vote_average"}),
        ("paper rule: Smooth-Mean, independent, uncorrected (UNSOUND)", "smooth_reduce",
         {**common, "noise_mode": "independent", "unsound_paper_radius": True}),
    ]


def build(name, model, sigma, options, lr=None):
    from art_some.plugins import get

    optimizer = None if lr is None else torch.optim.Adam(model.parameters(), lr=lr)
    return get("estimators", name)(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer=optimizer,
                                   clip_values=(0.0, 1.0), device_type="cpu", scale=sigma, sample_size=100,
                                   alpha=0.001, noise_batch_size=400, seed=0, **options)


def main():
    from art_some.data import digits_arrays
    from art_some.models import DigitsCNN
    from art_some.runs.metrics import abstention_rate, average_certified_radius, certified_accuracy
    from art_some.trainers import GaussianAugmentationTrainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--skip", type=int, default=2, help="certify every skip-th test digit")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--crop-augment", action="store_true", help="train on random crops of the resized digits too")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.skip = 200, 3, 20
    torch.set_num_threads(max(1, torch.get_num_threads()))

    (x, y), (x_test, y_test) = digits_arrays("train"), digits_arrays("test")
    x_test, y_test = x_test[:: args.skip], y_test[:: args.skip]
    if args.crop_augment:
        x, y = crop_augmented(x, y)
    torch.manual_seed(0)
    model = DigitsCNN()
    clf = build("smoothed", model, args.sigma, {}, lr=1e-3)
    start = time.perf_counter()
    GaussianAugmentationTrainer(clf, seed=0).fit(x, y, batch_size=128, nb_epochs=args.epochs)
    train_seconds = time.perf_counter() - start
    model.eval()

    rows = []
    for label, name, options in configurations():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = build(name, model, args.sigma, options)
            start = time.perf_counter()
            result = est.certify_detailed(x_test, n=args.n, n0=100, alpha=0.001)
        seconds = time.perf_counter() - start
        records = [{"radius": float(r), "correct": int(p == t), "predict": int(p)}
                   for r, p, t in zip(result.radius, result.predict, y_test)]
        info = result.extra
        rows.append({
            "method": label,
            "certified_accuracy": dict(zip(map(str, RADII), certified_accuracy(records, RADII).round(4).tolist())),
            "acr": round(average_certified_radius(records), 4),
            "abstention": round(abstention_rate(records), 4),
            "seconds_per_input": round(seconds / len(x_test), 4),
            "forward_passes_per_input": (100 + args.n) * info.get("patches", 1),
            "radius_space": info.get("radius_space", "input"),
            "radius_divisor": round(info.get("radius_divisor", 1.0), 4),
            "sound": info.get("sound", True),
        })
        print(f"{label}: ACR {rows[-1]['acr']:.3f} ({seconds:.0f} s)", flush=True)

    report = {"sigma": args.sigma, "crop_augment": args.crop_augment, "n0": 100, "n": args.n, "alpha": 0.001,
              "inputs": len(x_test), "epochs": args.epochs, "train_seconds": round(train_seconds, 1),
              "patches": PATCHES, "resize": 10, "torch_threads": torch.get_num_threads(), "rows": rows}
    name = f"smooth_reduce_digits_s{str(args.sigma).replace('.', '')}{'_crops' if args.crop_augment else ''}.json"
    out = Path(args.output or f"benchmarks/results/{name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def crop_augmented(x, y, copies: int = 2, seed: int = 0):
    """The digits plus ``copies`` random 8x8 crops of each digit resized to 10x10 (the patches' framing)."""
    from art_some.patches import resize

    rng = np.random.default_rng(seed)
    big = resize(torch.from_numpy(x), (10, 10)).numpy()
    crops = []
    for _ in range(copies):
        offsets = rng.integers(0, 3, size=(len(x), 2))
        crops.append(np.stack([b[:, i : i + 8, j : j + 8] for b, (i, j) in zip(big, offsets)]))
    return np.concatenate([x, *crops]).astype(np.float32), np.concatenate([y] * (copies + 1))


def markdown(report) -> str:
    head = "| method | " + " | ".join(f"r={r:g}" for r in RADII) + " | ACR | abstain | s/input | passes/input |"
    lines = [head, "|" + "---|" * (len(RADII) + 5)]
    for row in report["rows"]:
        acc = " | ".join(f"{100 * v:.1f}" for v in row["certified_accuracy"].values())
        lines.append(f"| {row['method']} | {acc} | {row['acr']:.3f} | {100 * row['abstention']:.1f} | "
                     f"{row['seconds_per_input']:.3f} | {row['forward_passes_per_input']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
