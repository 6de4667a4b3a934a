"""
SOME on the embedded digits: multi-head networks trained by circular teaching (M = 3 and 5) against a single-head
network and an ensemble of M separately trained networks, with the same training budget (epochs, loader batch,
optimizer). Reports certified accuracy at radii, ACR, abstentions, training and certification time; and, in the
same run, the certification throughput of the M = 5 multi-head network against its single-head twin and an
ensemble of 5 networks (digits CNN and CIFAR ResNet-110 shapes, random weights: throughput does not depend on
the weights).

    python benchmarks/some_digits.py                              # sigma 0.25, Gaussian base, 40 epochs
    python benchmarks/some_digits.py --base consistency --sigma 0.5
    python benchmarks/some_digits.py --quick                      # a smoke run (few epochs, small n)

Single-head networks are the multi-head architecture with one head (``single_head_twin``); the ensemble is M of
them, trained with different seeds by the base method, whose logits are summed (the same aggregation as SOME's).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

warnings.filterwarnings("ignore")


def estimator(model, sigma, lr=None, seed=0, noise_batch_size=2000):
    from art_some import MultiHeadSmoothedClassifier

    optimizer = None if lr is None else torch.optim.Adam(model.parameters(), lr=lr)
    return MultiHeadSmoothedClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer=optimizer,
                                       clip_values=(0.0, 1.0), device_type="cpu", scale=sigma, sample_size=100,
                                       alpha=0.001, noise_batch_size=noise_batch_size, seed=seed)


def fit(clf, trainer, x, y, args):
    scheduler = torch.optim.lr_scheduler.StepLR(clf.optimizer, step_size=max(1, args.epochs // 3 * 2), gamma=0.1)
    start = time.perf_counter()
    history = trainer.fit(x, y, batch_size=args.batch_size, nb_epochs=args.epochs, scheduler=scheduler)
    return time.perf_counter() - start, history


def base_trainer(clf, base, seed):
    from art_some.trainers import ConsistencyTrainer, GaussianAugmentationTrainer

    if base == "gaussian":
        return GaussianAugmentationTrainer(clf, seed=seed)
    return ConsistencyTrainer(clf, lbd=20.0 if clf.scale <= 0.25 else 10.0, seed=seed)


def train_single(args, x, y, seed):
    from art_some.models.multihead import digits_cnn_multihead, single_head_twin

    torch.manual_seed(seed)
    net = single_head_twin(digits_cnn_multihead(num_heads=1))
    clf = estimator(net, args.sigma, lr=args.lr, seed=seed)
    seconds, _ = fit(clf, base_trainer(clf, args.base, seed), x, y, args)
    return net, seconds


def train_some(args, x, y, heads):
    from art_some.models.multihead import digits_cnn_multihead
    from art_some.trainers import SOMETrainer

    torch.manual_seed(0)
    net = digits_cnn_multihead(num_heads=heads)
    clf = estimator(net, args.sigma, lr=args.lr)
    seconds, _ = fit(clf, SOMETrainer(clf, base=args.base, seed=0, total_epochs=args.epochs), x, y, args)
    return net, seconds


def certify_all(net, args, x_test, y_test):
    from art_some.runs.metrics import abstention_rate, average_certified_radius, certified_accuracy

    clf = estimator(net.eval(), args.sigma)
    start = time.perf_counter()
    result = clf.certify_detailed(x_test, n=args.n, n0=100, alpha=0.001, batch_size=2000)
    seconds = time.perf_counter() - start
    records = [{"label": int(label), "predict": int(p), "radius": float(r), "correct": int(p == label)}
               for label, p, r in zip(y_test, result.predict, result.radius)]
    return {
        "certified_accuracy": {str(r): round(100 * float(a), 1)
                               for r, a in zip(args.radii, certified_accuracy(records, args.radii))},
        "acr": round(average_certified_radius(records), 3),
        "abstained": round(100 * abstention_rate(records), 1),
        "certify_seconds": round(seconds, 1),
    }


def quality(args):
    from art_some.data import digits_arrays
    from art_some.models.multihead import MultiHeadNet

    x, y = digits_arrays("train")
    x_test, y_test = digits_arrays("test")
    rows = {}
    net, seconds = train_single(args, x, y, seed=0)
    rows["single head"] = {"train_seconds": round(seconds, 1), **certify_all(net, args, x_test, y_test)}
    members, member_seconds = [net], [seconds]
    for heads in args.heads:
        while len(members) < heads:
            member, seconds = train_single(args, x, y, seed=len(members))
            members.append(member)
            member_seconds.append(seconds)
        net, seconds = train_some(args, x, y, heads)
        rows[f"SOME M={heads}"] = {"train_seconds": round(seconds, 1), **certify_all(net, args, x_test, y_test)}
        ensemble = MultiHeadNet(nn.Identity(), members[:heads])
        rows[f"ensemble of {heads}"] = {"train_seconds": round(sum(member_seconds[:heads]), 1),
                                        **certify_all(ensemble, args, x_test, y_test)}
        print(json.dumps(rows, indent=1), flush=True)
    return rows


def samples_per_second(net, shape, n, batch_size):
    from art_some import MultiHeadSmoothedClassifier

    clf = MultiHeadSmoothedClassifier(net.eval(), nn.CrossEntropyLoss(), shape, 10, clip_values=(0.0, 1.0),
                                      device_type="cpu", scale=0.25, noise_batch_size=batch_size)
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    clf.predict_counts(x[:1], n=batch_size)  # warm-up
    start = time.perf_counter()
    clf.predict_counts(x, n=n)
    return 2 * n / (time.perf_counter() - start)


def throughput(args):
    from art_some.models.multihead import (
        MultiHeadNet,
        cifar_resnet_multihead,
        digits_cnn_multihead,
        single_head_twin,
    )

    rows = {}
    for name, build, shape, n in [
        ("digits CNN", lambda: digits_cnn_multihead(num_heads=5), (1, 8, 8), args.throughput_n * 10),
        ("CIFAR ResNet-110", lambda: cifar_resnet_multihead(depth=110, num_heads=5), (3, 32, 32), args.throughput_n),
    ]:
        torch.manual_seed(0)
        multi = build()
        twin = single_head_twin(multi)
        ensemble = MultiHeadNet(nn.Identity(), [single_head_twin(build()) for _ in range(5)])
        speeds = {label: samples_per_second(net, shape, n, args.throughput_batch)
                  for label, net in (("single head", twin), ("SOME M=5", multi), ("ensemble of 5", ensemble))}
        base = speeds["single head"]
        rows[name] = {label: {"samples_per_s": round(s, 1), "relative": round(s / base, 3)}
                      for label, s in speeds.items()}
        print(json.dumps({name: rows[name]}, indent=1), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=["gaussian", "consistency"], default="gaussian")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--heads", default="3,5")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--throughput-n", type=int, default=1000)
    parser.add_argument("--throughput-batch", type=int, default=500)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 epochs, n=200: checks that the script runs")
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    args.heads = [int(h) for h in args.heads.split(",")]
    args.radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    if args.quick:
        args.epochs, args.n, args.throughput_n = 2, 200, 100
    torch.set_num_threads(torch.get_num_threads())
    results = {"settings": {k: v for k, v in vars(args).items() if k != "output"}}
    if not args.skip_quality:
        results["quality"] = quality(args)
    results["throughput"] = throughput(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
