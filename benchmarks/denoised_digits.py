"""
Diffusion denoised smoothing on the embedded digits, a miniature of the multi-scale paper's setting: an
off-the-shelf classifier (DigitsCNN trained on clean digits only), a small diffusers UNet trained briefly as a DDPM
epsilon-predictor on the training digits, one-shot denoising, and

- single-level denoised smoothing (Carlini et al.) at sigma = 0.25, 0.5 and 1.0;
- the cascade over {0.25, 0.5, 1.0} (Jeong & Shin), p0 = 0.5, alpha split alpha / K;
- the cascade after diffusion calibration (Brier + anti-consistency fine-tuning of the UNet through the frozen
  classifier) and, last, with the classifier also fine-tuned on denoised images.

Reported: clean accuracy of the classifier, certified accuracy at radii, ACR, abstention, the levels visited per
input and the forward passes (UNet + classifier) per input, and the empirical accuracy of the cascaded PREDICT
(with guarantee) and of the official hybrid PREDICT (n = 200 per level).

    python benchmarks/denoised_digits.py            # n = 2000, every 2nd test digit (180)
    python benchmarks/denoised_digits.py --quick    # a smoke run

Writes ``benchmarks/results/denoised_digits.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
SIGMAS = (0.25, 0.5, 1.0)


def train_classifier(x, y, epochs: int):
    """DigitsCNN on clean digits: the 'off-the-shelf' classifier, never trained with noise."""
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        net.train()
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    return net.eval()


def train_denoiser(x, steps: int):
    """A small UNet trained as a DDPM epsilon-predictor (linear schedule, T = 1000) on t <= t*(sigma = 1)."""
    from art_some.models.diffusion import create_denoiser

    torch.manual_seed(0)
    den = create_denoiser("tiny_diffusion", channels=1, sample_size=8, widths=(32, 64))
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    gen = torch.Generator().manual_seed(0)
    x_t = torch.from_numpy(x)
    den.train()
    loss = torch.zeros(())
    for _ in range(steps):
        batch = x_t[torch.randint(0, len(x_t), (128,), generator=gen)]
        opt.zero_grad()
        loss = den.noise_prediction_loss(batch, generator=gen, max_sigma=max(SIGMAS))
        loss.backward()
        opt.step()
        sched.step()
    return den.eval(), float(loss.detach())


def build(model, denoiser, sigmas, optimizer=None, **kw):
    from art_some import DenoisedMultiScaleClassifier

    return DenoisedMultiScaleClassifier(model, None, (1, 8, 8), 10, denoiser=denoiser, sigmas=sigmas,
                                        optimizer=optimizer, clip_values=(0.0, 1.0), device_type="cpu",
                                        sample_size=100, alpha=0.001, noise_batch_size=1000, seed=0, **kw)


def evaluate(label, est, x_test, y_test, n, predict_n):
    from art_some.runs.metrics import abstention_rate, average_certified_radius, certified_accuracy

    start = time.perf_counter()
    result = est.certify_detailed(x_test, n=n, n0=100, alpha=0.001)
    seconds = time.perf_counter() - start
    records = [{"radius": float(r), "correct": int(p == t), "predict": int(p)}
               for r, p, t in zip(result.radius, result.predict, y_test)]
    visited = np.asarray(result.extra["levels_visited"])
    answered = [s for s in result.extra["level_sigma"] if s is not None]
    est.set_params(sample_size=predict_n)
    cascade_pred, _ = est.predict_classes(x_test)
    est.set_params(predict_rule="hybrid")
    hybrid_pred, _ = est.predict_classes(x_test)
    est.set_params(predict_rule="cascade", sample_size=100)
    row = {
        "method": label,
        "certified_accuracy": dict(zip(map(str, RADII), certified_accuracy(records, RADII).round(4).tolist())),
        "acr": round(average_certified_radius(records), 4),
        "abstention": round(abstention_rate(records), 4),
        "levels_visited": round(float(visited.mean()), 3),
        "answered_at": {str(s): int(sum(a == s for a in answered)) for s in est.levels},
        "forward_passes_per_input": round(float(visited.mean()) * (100 + n), 1),
        "seconds_per_input": round(seconds / len(x_test), 4),
        "predict_cascade_accuracy": round(float(np.mean(cascade_pred == y_test)), 4),
        "predict_cascade_abstain": round(float(np.mean(cascade_pred < 0)), 4),
        "predict_hybrid_accuracy": round(float(np.mean(hybrid_pred == y_test)), 4),
    }
    print(f"{label}: ACR {row['acr']:.3f}, levels {row['levels_visited']:.2f} ({seconds:.0f} s)", flush=True)
    return row


def main():
    from art_some.data import digits_arrays
    from art_some.trainers import DenoisedClassifierTrainer, DiffusionCalibrationTrainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--skip", type=int, default=2, help="certify every skip-th test digit")
    parser.add_argument("--classifier-epochs", type=int, default=30)
    parser.add_argument("--denoiser-steps", type=int, default=3000)
    parser.add_argument("--calibration-epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", default=None, help="save the trained classifier and UNet here, reuse if present")
    parser.add_argument("--output", default="benchmarks/results/denoised_digits.json")
    args = parser.parse_args()
    if args.quick:
        args.n, args.skip, args.classifier_epochs, args.denoiser_steps, args.calibration_epochs = 200, 30, 3, 100, 1
    (x, y), (x_test, y_test) = digits_arrays("train"), digits_arrays("test")
    x_test, y_test = x_test[:: args.skip], y_test[:: args.skip]

    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():  # the same seeded training, saved by an earlier run
        saved = torch.load(cache, weights_only=True)
        net, den = train_classifier(x, y, 0), train_denoiser(x, 0)[0]
        net.load_state_dict(saved["classifier"])
        den.load_state_dict(saved["denoiser"])
        classifier_seconds, denoiser_seconds, denoiser_loss = saved["meta"].tolist()
        net.eval(), den.eval()
    else:
        start = time.perf_counter()
        net = train_classifier(x, y, args.classifier_epochs)
        classifier_seconds = time.perf_counter() - start
        start = time.perf_counter()
        den, denoiser_loss = train_denoiser(x, args.denoiser_steps)
        denoiser_seconds = time.perf_counter() - start
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"classifier": net.state_dict(), "denoiser": den.state_dict(),
                        "meta": torch.tensor([classifier_seconds, denoiser_seconds, denoiser_loss])}, cache)
    with torch.no_grad():
        clean_acc = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    print(f"classifier clean accuracy {clean_acc:.3f}; denoiser final loss {denoiser_loss:.3f}", flush=True)

    rows = [evaluate(f"DDS sigma={s}", build(net, den, (s,)), x_test, y_test, args.n, 200) for s in SIGMAS]
    rows.append(evaluate("cascade {0.25, 0.5, 1.0}", build(net, den, SIGMAS), x_test, y_test, args.n, 200))

    est = build(net, den, SIGMAS)
    trainer = DiffusionCalibrationTrainer(est, optimizer=torch.optim.Adam(den.parameters(), lr=1e-4),
                                          num_noise_vec=4, mse_weight=1.0, seed=0)
    start = time.perf_counter()
    calibration_history = trainer.fit(x, y, batch_size=64, nb_epochs=args.calibration_epochs)
    calibration_seconds = time.perf_counter() - start
    rows.append(evaluate("cascade, calibrated UNet", est, x_test, y_test, args.n, 200))

    tuner = DenoisedClassifierTrainer(est, seed=0, optimizer=torch.optim.Adam(net.parameters(), lr=1e-4))
    tuner.fit(x, y, batch_size=64, nb_epochs=args.calibration_epochs)
    rows.append(evaluate("cascade, calibrated UNet + classifier on denoised", est, x_test, y_test, args.n, 200))

    report = {"sigmas": SIGMAS, "p0": 0.5, "n0": 100, "n": args.n, "alpha": 0.001, "alpha_split": "uniform",
              "inputs": len(x_test), "clean_accuracy": round(clean_acc, 4),
              "classifier_epochs": args.classifier_epochs, "denoiser_steps": args.denoiser_steps,
              "denoiser_final_loss": round(denoiser_loss, 4), "calibration_epochs": args.calibration_epochs,
              "calibration_history": [round(v, 4) for v in calibration_history],
              "seconds": {"classifier": round(classifier_seconds, 1), "denoiser": round(denoiser_seconds, 1),
                          "calibration": round(calibration_seconds, 1)},
              "torch_threads": torch.get_num_threads(), "rows": rows}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def markdown(report) -> str:
    head = ("| method | " + " | ".join(f"r={r:g}" for r in RADII)
            + " | ACR | abstain | levels | passes/input | s/input | PREDICT (cascade / hybrid) |")
    lines = [head, "|" + "---|" * (len(RADII) + 7)]
    for row in report["rows"]:
        acc = " | ".join(f"{100 * v:.1f}" for v in row["certified_accuracy"].values())
        lines.append(f"| {row['method']} | {acc} | {row['acr']:.3f} | {100 * row['abstention']:.1f} | "
                     f"{row['levels_visited']:.2f} | {row['forward_passes_per_input']:.0f} | "
                     f"{row['seconds_per_input']:.3f} | {100 * row['predict_cascade_accuracy']:.1f} / "
                     f"{100 * row['predict_hybrid_accuracy']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
