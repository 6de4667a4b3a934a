"""
Sequential CERTIFY against fixed-n CERTIFY on the embedded digits: certified accuracy at r in {0.25, 0.5, 0.75, 1.0},
ACR and the mean forward passes per input (n0 + estimation draws), for the demo's model (Gaussian training, as
``art-some demo`` trains it) and a SmoothMix-trained one, at sigma 0.25 and 0.5; fixed n = 100,000 against the
fixed-radius and radius modes at maximum n = 100,000. Also plots the forward passes per input against pA (fixed
n's estimate).

    python benchmarks/sequential_digits.py --skip 9 --output benchmarks/results/sequential_digits.json \
        --plot docs/sequential_draws.png
    python benchmarks/sequential_digits.py --quick          # a smoke run (2 epochs, n = 2,000, 30 test digits)

Every run uses the same seed, so fixed n and the sequential modes see the same selection draws (n0 = 100). Each
sequential mode runs once per bound of ``--bounds``; ``--fixed-from FILE`` takes fixed n's rows from an earlier run's
JSON with the same settings instead of rerunning them (fixed n's records depend only on the model, the seed and the
inputs; the script checks that the first inputs' fixed-n estimates of pA agree). Every row reports its forward
passes per second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))
RADII = [0.25, 0.5, 0.75, 1.0]


def trained(method: str, sigma: float, args):
    """The digits model trained with ``method`` ("gaussian": the demo's training; "smoothmix"), cached on disk."""
    from trainers_digits import train

    from art_some.data import digits_arrays

    cache = Path(args.cache) / f"{method}_s{sigma}_e{args.epochs}.pt" if args.cache else None
    from art_some.models import DigitsCNN

    if cache is not None and cache.exists():
        model = DigitsCNN()
        model.load_state_dict(torch.load(cache))
        return model.eval()
    x, y = digits_arrays("train")
    options = argparse.Namespace(sigma=sigma, lr=1e-3, epochs=args.epochs, batch_size=64, epsilon=0.5,
                                 ddrs_train_lr=1e-4)
    model, _, _ = train(method, options, x, y)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model.eval()


def _earlier_fixed_n(path, method, sigma, clf, x, check=3):
    """Fixed n's row from an earlier run, after checking that its first inputs' pA estimates are reproduced."""
    earlier = json.loads(Path(path).read_text())
    row = next(r for r in earlier["results"] if (r["method"], r["sigma"], r["procedure"]) == (method, sigma, "fixed n"))
    points = next(p for p in earlier["points"] if (p["method"], p["sigma"]) == (method, sigma))
    now = clf.certify_detailed(x[:check], n=earlier["settings"]["n"])
    p_hat = now.counts_estimation[np.arange(check), now.counts_selection.argmax(1)] / now.n
    if not np.array_equal(p_hat, np.asarray(points["pA"][:check])):
        raise SystemExit(f"{path}: fixed n's estimates differ for {method} sigma {sigma}: rerun fixed n")
    return {**row, "reused_from": str(path)}


def summarise(result, labels, seconds):
    correct = (result.predict == labels) & (result.predict >= 0)
    draws = result.n + np.zeros(len(labels)) if result.draws is None else result.draws
    return {
        "certified_accuracy": {f"{r:g}": round(100 * float(np.mean(correct & (result.radius >= r))), 2)
                               for r in RADII},
        "acr": round(float(np.mean(np.where(correct, result.radius, 0.0))), 4),
        "abstained": round(100 * float(np.mean(result.predict < 0)), 2),
        "forward_passes_per_input": round(float(np.mean(result.n0 + draws)), 1),
        "seconds": round(seconds, 1),
        "forward_passes_per_second": round(float(np.sum(result.n0 + draws)) / max(seconds, 1e-9)),
        "stopped_by": None if result.stopped_by is None else
        {k: int(v) for k, v in zip(*np.unique(result.stopped_by, return_counts=True))},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigmas", default="0.25,0.5")
    parser.add_argument("--methods", default="gaussian,smoothmix")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tolerances", default="0.02,0.1", help="radius mode's tolerances, one run each")
    parser.add_argument("--growth", type=float, default=None,
                        help="growth of the rounds' cumulative draws (default: each bound's own)")
    parser.add_argument("--bounds", default="mixture,union-cp,betting", help="sequential bounds, one run each")
    parser.add_argument("--fixed-from", default=None, help="fixed n's rows from this earlier output (see above)")
    parser.add_argument("--procedures", default="fixed n;fixed-radius mode;radius mode",
                        help="which procedures to run (semicolon-separated name prefixes)")
    parser.add_argument("--skip", type=int, default=1, help="certify every skip-th test digit")
    parser.add_argument("--max-inputs", type=int, default=None, help="at most this many test digits (default: all)")
    parser.add_argument("--cache", default="benchmarks/results/cache", help="trained models are kept here")
    parser.add_argument("--output", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.n, args.max_inputs, args.cache = 2, 2000, 30, None
    from art_some import SmoothedClassifier
    from art_some.data import digits_arrays

    torch.set_num_threads(2)
    x, y = digits_arrays("test")
    x, y = x[::args.skip][:args.max_inputs], y[::args.skip][:args.max_inputs]
    results, points = [], []
    for method in args.methods.split(","):
        for sigma in (float(s) for s in args.sigmas.split(",")):
            model = trained(method, sigma, args)
            clf = SmoothedClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0),
                                     device_type="cpu", scale=sigma, sample_size=args.n0, alpha=args.alpha,
                                     noise_batch_size=10_000)
            runs = {"fixed n": lambda: clf.certify_detailed(x, n=args.n)}
            for bound in args.bounds.split(","):
                options = dict(n=args.n, growth=args.growth, bound=bound)
                runs[f"fixed-radius mode, {bound}"] = lambda o=options: clf.certify_sequential(x, radii=RADII, **o)
                for t in (float(v) for v in args.tolerances.split(",")):
                    runs[f"radius mode, tolerance {t:g}, {bound}"] = \
                        lambda o=options, t=t: clf.certify_sequential(x, tolerance=t, **o)
            wanted = args.procedures.split(";")
            runs = {name: run for name, run in runs.items() if any(name.startswith(w) for w in wanted)}
            outcome = {}
            if args.fixed_from and "fixed n" in runs:
                runs.pop("fixed n")
                results.append(_earlier_fixed_n(args.fixed_from, method, sigma, clf, x))
            for name, run in runs.items():
                start = time.perf_counter()
                result = run()
                outcome[name] = (result, summarise(result, y, time.perf_counter() - start))
                print(method, sigma, name, json.dumps(outcome[name][1]), flush=True)
            if "fixed n" in outcome:
                fixed = outcome["fixed n"][0]
                top = fixed.counts_estimation[np.arange(len(y)), fixed.counts_selection.argmax(1)]
                p_hat = (top / fixed.n).tolist()
            else:
                earlier = json.loads(Path(args.fixed_from).read_text())["points"] if args.fixed_from else []
                p_hat = next((p["pA"] for p in earlier if (p["method"], p["sigma"]) == (method, sigma)), None)
            if p_hat is not None:
                points.append({"method": method, "sigma": sigma, "pA": p_hat,
                               **{name: (outcome[name][0].n0 + outcome[name][0].draws).tolist()
                                  for name in outcome if name != "fixed n"}})
            fixed_passes = args.n0 + args.n
            for name, (_, summary) in outcome.items():
                summary["saving"] = round(fixed_passes / summary["forward_passes_per_input"], 2)
                results.append({"method": method, "sigma": sigma, "procedure": name, **summary})
    print(render(results))
    if args.output:
        Path(args.output).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()},
                                                 "torch": torch.__version__, "results": results,
                                                 "points": points}, indent=1))
    if args.plot and points:
        plot(points, args.plot)


def render(results) -> str:
    head = ("| model | sigma | procedure | " + " | ".join(f"r={r:g}" for r in RADII)
            + " | ACR | forward passes / input | fewer than fixed n |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        acc = " | ".join(f"{r['certified_accuracy'][f'{x:g}']:.1f}" for x in RADII)
        lines.append(f"| {r['method']} | {r['sigma']:g} | {r['procedure']} | {acc} | {r['acr']:.3f} | "
                     f"{r['forward_passes_per_input']:,.0f} | {r['saving']:.1f}x |")
    return "\n".join(lines)


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(4 * len(points), 3.6), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], points):
        for name, marker in zip([k for k in run if "mode" in k], "ox+^sv*dph"):
            ax.scatter(run["pA"], run[name], s=10, marker=marker, label=name, alpha=0.6)
        ax.set_yscale("log")
        ax.set_xlabel("pA (fixed-n estimate)")
        ax.set_title(f"{run['method']}, sigma={run['sigma']:g}", fontsize=9)
    axes[0][0].set_ylabel("forward passes per input")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
