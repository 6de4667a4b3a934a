"""
Certification throughput and memory: art-some's SmoothedClassifier against the base model's raw forward
throughput (the limit) and ART's PyTorchRandomizedSmoothing, on the same base model and inputs.

    python benchmarks/certify_throughput.py                       # CPU, CIFAR ResNet-20, n=2,000
    python benchmarks/certify_throughput.py --device cuda --n 100000 --batch-sizes 1000,2000,4000,8000

Memory: the peak memory that ``certify`` adds for one 3x32x32 input at n=100,000, each estimator in a fresh
process (host RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU). The model for that part is a small
convolution (memory is about how noise is handled, not about the network).
ART's ``certify`` needs statsmodels (``pip install -e .[bench]``); without it ART's rows are skipped.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import threading
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
SHAPE = (3, 32, 32)


def build_model(name: str):
    from art_some.models import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=10).eval()


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))


def wrap(cls, model, device, n0, batch_size, **extra):
    return cls(model, torch.nn.CrossEntropyLoss(), SHAPE, 10, clip_values=(0.0, 1.0), device_type=device_type(device),
               sample_size=n0, scale=0.25, alpha=0.001, **extra)


def device_type(device: str) -> str:
    return "gpu" if device == "cuda" else "cpu"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def raw_throughput(model, device, batch_sizes, seconds=5.0):
    """Best samples/s of model(x) under inference_mode over the batch sizes (the limit certify can reach)."""
    model = model.to(device)
    best = (0.0, None)
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.rand((b, *SHAPE), device=device)
            model(x)
            sync(device)
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                model(x)
                count += b
            sync(device)
            rate = count / (time.perf_counter() - start)
            best = max(best, (rate, b))
    return best


def time_certify(fn, device, repeats=3):
    """Best of ``repeats`` timed runs after a warm-up (the machine's other load only ever slows a run down)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _memory_worker(kind, device, n, queue):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    from art_some import SmoothedClassifier

    model = tiny_model().to(device)
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    if kind == "art-some":
        clf = wrap(SmoothedClassifier, model, device, 100, 1000, noise_batch_size=1000)
        run = lambda: clf.certify(x, n=n, batch_size=1000)  # noqa: E731
    else:
        clf = wrap(PyTorchRandomizedSmoothing, model, device, 100, 1000)
        run = lambda: clf.certify(x, n=n, batch_size=1000)  # noqa: E731
    with torch.inference_mode():  # baseline: the model has run once on one input
        model(torch.from_numpy(x).to(device))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        run()
        torch.cuda.synchronize()
        added = torch.cuda.max_memory_allocated() - before
    else:
        # ru_maxrss is a lifetime high-water mark (imports can set it), so poll the current RSS instead.
        before = current_rss()
        peak = [before]
        done = threading.Event()

        def poll():
            while not done.is_set():
                peak[0] = max(peak[0], current_rss())
                time.sleep(0.002)

        watcher = threading.Thread(target=poll)
        watcher.start()
        run()
        done.set()
        watcher.join()
        added = max(peak[0], current_rss()) - before
    queue.put(added)


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_added(kind, device, n):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(kind, device, n, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 else None


def has_statsmodels() -> bool:
    try:
        import statsmodels  # noqa: F401

        return True
    except ImportError:
        return False


def main():
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    from art_some import SmoothedClassifier

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="250,500,1000")
    parser.add_argument("--memory-n", type=int, default=100_000)
    parser.add_argument("--skip-art", action="store_true")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = args.device
    run_art = not args.skip_art and has_statsmodels()

    model = build_model(args.model)
    raw_rate, best_b = raw_throughput(model, device, [int(b) for b in args.batch_sizes.split(",")])
    x = np.random.default_rng(0).random((args.inputs, *SHAPE), dtype=np.float32)
    samples = args.inputs * (args.n0 + args.n)

    ours = wrap(SmoothedClassifier, model, device, args.n0, best_b, noise_batch_size=best_b)
    t_ours = time_certify(lambda: ours.certify(x, n=args.n, batch_size=best_b), device)
    rows = [("raw forward (the limit)", raw_rate, 1.0), ("art-some SmoothedClassifier.certify", samples / t_ours,
                                                          samples / t_ours / raw_rate)]
    if run_art:
        art = wrap(PyTorchRandomizedSmoothing, model, device, args.n0, best_b)
        t_art = time_certify(lambda: art.certify(x, n=args.n, batch_size=best_b), device)
        rows.append(("ART PyTorchRandomizedSmoothing.certify", samples / t_art, samples / t_art / raw_rate))

    mem = {"art-some": memory_added("art-some", device, args.memory_n)}
    if run_art:
        mem["ART"] = memory_added("ART", device, args.memory_n)

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model: {args.model}; best batch size {best_b}; {args.inputs} inputs, n0={args.n0}, "
          f"n={args.n}; torch {torch.__version__}")
    print(f"| {'what':<40} | {'samples/s':>10} | {'x raw':>6} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 8}|")
    for what, rate, ratio in rows:
        print(f"| {what:<40} | {rate:>10.0f} | {ratio:>6.3f} |")
    print(f"peak memory added by certify, one 3x32x32 input, n={args.memory_n}:")
    for who, added in mem.items():
        print(f"  {who}: {'failed' if added is None else f'{added / 2**20:.0f} MiB'}")
    if not run_art:
        print("(ART rows skipped: --skip-art or statsmodels missing)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "model": args.model, "batch_size": best_b, "rows": rows,
                       "memory_added_bytes": mem, "n": args.n, "memory_n": args.memory_n}, f, indent=2)


if __name__ == "__main__":
    main()
