"""
Forward passes per second of sequential CERTIFY against fixed-n CERTIFY, through the runner that ``art-some certify``
uses (records, chunks of inputs per engine call), on the same digits model and batch size: the cost of stopping
inputs at different times. A briefly trained digits model (Gaussian noise, ``--epochs``) keeps the inputs' pA
profile realistic (most stop early, some run to n). The procedures take turns ``--repeats`` times and each reports
its fastest run, so that a shared machine's slow spells do not decide the comparison.

    PYTHONPATH=. .venv/bin/python benchmarks/sequential_throughput.py \
        --output benchmarks/results/sequential_throughput.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--inputs", type=int, default=60)
    parser.add_argument("--batch-sizes", default="1000,10000")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each procedure, in turns; the fastest counts")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    from art_some import GaussianAugmentationTrainer, SmoothedClassifier
    from art_some.data import digits, digits_arrays
    from art_some.evaluation import certify_dataset
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = DigitsCNN()
    x, y = digits_arrays("train")
    clf = SmoothedClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0),
                             optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), device_type="cpu",
                             scale=args.sigma, sample_size=100, alpha=0.001)
    GaussianAugmentationTrainer(clf, seed=0).fit(x, y, batch_size=64, nb_epochs=args.epochs)
    model.eval()
    data, _ = digits(split="test")
    indices = list(range(0, len(data), max(1, len(data) // args.inputs)))[: args.inputs]
    procedures = {"fixed n": None, "fixed-radius mode, mixture": {"radii": [0.25, 0.5, 0.75]},
                  "radius mode, mixture": {"tolerance": 0.02},
                  "fixed-radius mode, union-cp": {"radii": [0.25, 0.5, 0.75], "bound": "union-cp"}}
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        clf.set_params(noise_batch_size=batch)
        seconds = {name: [] for name in procedures}
        # The procedures take turns, --repeats times: a shared machine's slow spells then hit all of them alike, and
        # each keeps its fastest run.
        for _ in range(args.repeats):
            for name, sequential in procedures.items():
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    records = certify_dataset(clf, data, indices, Path(tmp) / "r.jsonl", n=args.n,
                                              sequential=sequential, progress=False)
                    seconds[name].append(time.perf_counter() - start)
                passes = sum(100 + r.get("draws", args.n) for r in records)
                print(json.dumps({"batch_size": batch, "procedure": name, "seconds": round(seconds[name][-1], 2)}),
                      flush=True)
                if len(seconds[name]) == args.repeats:
                    best = min(seconds[name])
                    rows.append({"batch_size": batch, "procedure": name, "forward_passes": passes,
                                 "seconds": round(best, 2), "passes_per_second": round(passes / best),
                                 "all_seconds": [round(t, 2) for t in seconds[name]]})
    for row in rows:
        fixed = next(r for r in rows if r["batch_size"] == row["batch_size"] and r["procedure"] == "fixed n")
        row["against_fixed_n"] = round(row["passes_per_second"] / fixed["passes_per_second"], 3)
    lines = ["| batch size | procedure | forward passes | seconds | passes / s | against fixed n |", "|---" * 6 + "|"]
    lines += [f"| {r['batch_size']:,} | {r['procedure']} | {r['forward_passes']:,} | {r['seconds']} | "
              f"{r['passes_per_second']:,} | {r['against_fixed_n']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text(json.dumps({"settings": vars(args), "torch": torch.__version__, "rows": rows},
                                                indent=1))


if __name__ == "__main__":
    main()
