"""
The robust trainers on the embedded digits, against Gaussian training at the same sigma: certified accuracy at
radii, ACR, abstentions and training time of Gaussian, SmoothMix, SmoothAdv, MACER, CRT (distilled from the
SmoothMix model) and DDRS training; then data-dependent sigma at test time on the Gaussian and DDRS models: DDRS's
fixed-sigma certificate (a certificate of g_sigma_x only), with the memory certifier, and Sukenik et al.'s sound
input-dependent certificate with a kNN sigma.

    python benchmarks/trainers_digits.py --output benchmarks/results/trainers_digits_s025.json
    python benchmarks/trainers_digits.py --quick          # a smoke run (2 epochs, small n)

Every network is the same DigitsCNN with the same budget (epochs, loader batch, Adam, step schedule); trainer
options are the trainers' defaults unless listed in ``settings`` of the output. CRT's time is the student's
training only (the teacher is the SmoothMix model, already trained).
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

warnings.filterwarnings("ignore")


def classifier(model, sigma, lr=None, cls=None, **kwargs):
    from art_some import SmoothedClassifier

    cls = cls or SmoothedClassifier
    optimizer = None if lr is None else torch.optim.Adam(model.parameters(), lr=lr)
    return cls(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer=optimizer, clip_values=(0.0, 1.0),
               device_type="cpu", scale=sigma, sample_size=100, alpha=0.001, noise_batch_size=4000, **kwargs)


def train(method, args, x, y, teacher=None):
    """(model, seconds, trainer) for one trainer, trained from the same seeded initialisation."""
    from art_some import (
        CRTTrainer,
        DDRSTrainer,
        GaussianAugmentationTrainer,
        MACERTrainer,
        SmoothAdvTrainer,
        SmoothMixTrainer,
    )
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN()
    clf = classifier(model, args.sigma, lr=args.lr)
    trainer = {
        "gaussian": lambda: GaussianAugmentationTrainer(clf, seed=0),
        "smoothmix": lambda: SmoothMixTrainer(clf, seed=0),
        "smoothadv": lambda: SmoothAdvTrainer(clf, epsilon=args.epsilon, num_steps=2, num_noise_vec=2, seed=0),
        "macer": lambda: MACERTrainer(clf, seed=0),
        "crt": lambda: CRTTrainer(clf, teacher, seed=0),
        "ddrs": lambda: DDRSTrainer(clf, base="gaussian", sigma_lr=args.ddrs_train_lr, seed=0),
    }[method]()
    scheduler = torch.optim.lr_scheduler.StepLR(clf.optimizer, step_size=max(1, args.epochs * 2 // 3), gamma=0.1)
    start = time.perf_counter()
    trainer.fit(x, y, batch_size=args.batch_size, nb_epochs=args.epochs, scheduler=scheduler)
    return model.eval(), time.perf_counter() - start, trainer


def summarise(result, y_test, radii, seconds):
    from art_some.runs.metrics import abstention_rate, average_certified_radius, certified_accuracy

    records = [{"label": int(label), "predict": int(p), "radius": float(r), "correct": int(p == label)}
               for label, p, r in zip(y_test, result.predict, result.radius)]
    return {"certified_accuracy": {str(r): round(100 * float(a), 1)
                                   for r, a in zip(radii, certified_accuracy(records, radii))},
            "acr": round(average_certified_radius(records), 3), "abstained": round(100 * abstention_rate(records), 1),
            "certify_seconds": round(seconds, 1)}


def certify(clf, args, x_test, y_test, memory=None):
    start = time.perf_counter()
    if memory is not None:
        result = clf.certify_with_memory(x_test, n=args.n, n0=100, alpha=0.001, memory=memory)
    else:
        result = clf.certify_detailed(x_test, n=args.n, n0=100, alpha=0.001)
    return result, summarise(result, y_test, args.radii, time.perf_counter() - start)


def render(results) -> str:
    """The Markdown tables of docs/trainers_results.md."""
    settings = results["settings"]
    radii = [str(r) for r in settings["radii"]]
    head = "| {} | " + " | ".join(f"r={r}" for r in radii) + " | ACR | abstain | {} |"
    lines = [head.format("training", "train s"), "|" + "---|" * (len(radii) + 4)]
    for name, row in results["training"].items():
        cells = " | ".join(f"{row['certified_accuracy'][r]:.1f}" for r in radii)
        lines.append(f"| {name} | {cells} | {row['acr']:.3f} | {row['abstained']:.1f} | {row['train_seconds']:.1f} |")
    lines += ["", head.format("test-time sigma", "sigma (mean or range) / memory changes"),
              "|" + "---|" * (len(radii) + 4)]
    for name, row in results["data_dependent"].items():
        cells = " | ".join(f"{row['certified_accuracy'][r]:.1f}" for r in radii)
        extra = row.get("sigma_mean", row.get("sigma_range", ""))
        if "changed_by_memory" in row:
            extra = f"{row['changed_by_memory']} changed"
        lines.append(f"| {name} | {cells} | {row['acr']:.3f} | {row['abstained']:.1f} | {extra} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epsilon", type=float, default=0.5, help="SmoothAdv's L2 radius")
    parser.add_argument("--ddrs-train-lr", type=float, default=1e-4, help="DDRS's sigma step during training")
    parser.add_argument("--sigma-lr", type=float, default=0.04, help="test-time sigma step (ddsmoothing: 0.04)")
    parser.add_argument("--sigma-steps", type=int, default=300, help="test-time sigma steps (ddsmoothing: 900)")
    parser.add_argument("--sigma-samples", type=int, default=64, help="test-time draws per step (ddsmoothing: 100)")
    parser.add_argument("--rates", default="0.001,0.01,0.05", help="log-Lipschitz rates r of the kNN sigma")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--cache", default=None, help="folder to save trained models in and reuse them from")
    parser.add_argument("--quick", action="store_true", help="2 epochs, n=200, 40 test digits: checks the script")
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--render", default=None, help="Only print the Markdown tables of this results JSON.")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())), end="")
        return
    args.radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    rates = [float(r) for r in args.rates.split(",")]
    if args.quick:
        args.epochs, args.n, args.sigma_steps = 2, 200, 5

    from art_some import DataDependentSmoothedClassifier
    from art_some.data import digits_arrays
    from art_some.estimators.memory import MemoryCertifier
    from art_some.models import DigitsCNN

    x, y = digits_arrays("train")
    x_test, y_test = digits_arrays("test")
    if args.quick:
        x_test, y_test = x_test[:40], y_test[:40]
    results = {"settings": {k: v for k, v in vars(args).items() if k not in ("output", "cache")}, "training": {},
               "data_dependent": {}}
    models = {}
    cache = Path(args.cache) if args.cache else None
    for method in ("gaussian", "smoothmix", "smoothadv", "macer", "crt", "ddrs"):
        path = cache / f"{method}_s{args.sigma}_e{args.epochs}.pt" if cache else None
        if path is not None and path.exists():
            saved = torch.load(path, weights_only=True)
            model = DigitsCNN()
            model.load_state_dict(saved["model"])
            model.eval()
            seconds = float(saved["seconds"])
        else:
            teacher = classifier(models["smoothmix"], args.sigma) if method == "crt" else None
            model, seconds, _ = train(method, args, x, y, teacher=teacher)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "seconds": torch.tensor(seconds)}, path)
        models[method] = model
        _, row = certify(classifier(model, args.sigma), args, x_test, y_test)
        results["training"][method] = {"train_seconds": round(seconds, 1), **row}
        print(method, json.dumps(results["training"][method]), flush=True)

    search = dict(sigma_rule="optimize", certificate="fixed_sigma", sigma_lr=args.sigma_lr,
                  sigma_steps=args.sigma_steps, sigma_samples=args.sigma_samples)
    rows = results["data_dependent"]
    for name in ("gaussian", "ddrs"):
        dd = classifier(models[name], args.sigma, cls=DataDependentSmoothedClassifier, **search)
        start = time.perf_counter()
        sigmas = dd.sigma_of(torch.from_numpy(x_test))
        search_seconds = time.perf_counter() - start
        result, row = certify(dd, args, x_test, y_test)
        rows[f"{name} + DD sigma (fixed-sigma certificate)"] = {
            **row, "sigma_mean": round(float(np.mean(sigmas)), 3), "sigma_range": [round(float(sigmas.min()), 3),
                                                                                     round(float(sigmas.max()), 3)],
            "sigma_search_seconds": round(search_seconds, 1)}
        memory = MemoryCertifier()
        result, row = certify(dd, args, x_test, y_test, memory=memory)
        rows[f"{name} + DD sigma + memory"] = {**row, "changed_by_memory": int(result.extra["memory_changed"].sum())}
        print(name, json.dumps({k: v for k, v in rows.items() if k.startswith(name)}), flush=True)
    for rate in rates:
        dd = classifier(models["gaussian"], args.sigma, cls=DataDependentSmoothedClassifier, sigma_rule="knn",
                        reference=x, rate=rate)
        result, row = certify(dd, args, x_test, y_test)
        sig = result.extra["sigma"]
        rows[f"gaussian + kNN sigma r={rate} (input-dependent certificate)"] = {
            **row, "sigma_range": [round(float(sig.min()), 3), round(float(sig.max()), 3)]}
        print(rate, json.dumps(row), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
