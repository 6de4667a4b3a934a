"""
Certification at scale: how close ``certify`` comes to the base model's raw forward throughput, how a sharded
run scales over processes, what the batched runner gains at small n, and whether memory stays flat in n.

    python benchmarks/certify_scale.py                               # everything, CPU defaults (~15 min, 2 cores)
    python benchmarks/certify_scale.py --only throughput,memory       # some of it
    python benchmarks/certify_scale.py --quick                        # a smoke run (tiny settings, no files)

Sub-benchmarks (``--only``):

- ``throughput``: ``SmoothedClassifier.certify`` (n0 + n draws per input) against ``model(x)`` under
  ``torch.inference_mode()`` on the same number of inputs at the same batch size, for CIFAR ResNet-20 and
  ResNet-110 (randomly initialised, 3x32x32 random inputs) and the digits CNN (1x8x8). Goal: >= 0.95x raw.
- ``scaling``: K processes, one thread each, each certifying its shard (``certify_dataset(..., shard=(i, K))``)
  against one process with one thread certifying every input; efficiency = T_1 / (K * T_K), T_K the wall time of
  the K-process run (from the moment every process has imported and built its model to the last shard's end).
  Goal: >= 0.9 at K = 2. The merged shards (``merge_records``) must equal the single run's records but for
  ``seconds``.
- ``small_n``: the 360 test digits at n = 100 through ``certify_dataset`` (which packs
  ``noise_batch_size // max(n, n0)`` inputs per engine call) against one ``certify_detailed`` call per input;
  the records must agree.
- ``memory``: the peak host memory that ``certify`` adds for one 3x32x32 input at n = 1e3, 1e4, 1e5, each in a
  fresh process (``certify_throughput.memory_added``: RSS polled every 2 ms).

The machine may be shared, so compared variants are interleaved, every figure is the best of several runs and
the spread is kept. Raw figures go to ``benchmarks/results/certify_scale_<name>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = {"digits_cnn": (1, 8, 8), "cifar_resnet20": (3, 32, 32), "cifar_resnet110": (3, 32, 32)}
DIGITS = (1, 8, 8)


# ------------------------------------------------------------------------------------------------------------------
# Shared pieces (certify_gpu.py uses them too)
# ------------------------------------------------------------------------------------------------------------------
def build_model(name: str, device: str = "cpu"):
    """The registered model ``name``, randomly initialised from seed 0, in eval mode."""
    from art_some.models import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=10).to(device).eval()


def make_estimator(model, shape, device: str, n0: int, batch: int, **options):
    """A SmoothedClassifier over ``model`` (sigma 0.25, alpha 0.001, inputs in [0, 1]) with engine batch ``batch``."""
    from art_some import SmoothedClassifier

    return SmoothedClassifier(model, torch.nn.CrossEntropyLoss(), tuple(shape), 10, clip_values=(0.0, 1.0),
                              device_type="gpu" if device == "cuda" else "cpu", sample_size=n0, scale=0.25,
                              alpha=0.001, noise_batch_size=batch, **options)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def autocast(device: str, dtype):
    """Autocast to ``dtype`` on ``device`` (None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


def forward_pass(model, shape, samples: int, batch: int, device: str = "cpu", dtype=None, channels_last=False):
    """
    A callable running ``model`` on ``samples`` inputs in batches of ``batch`` under inference mode (the last batch
    partial), on one fixed random batch: the raw forward work that certifying ``samples`` noisy inputs needs.
    """
    x = torch.rand((batch, *shape), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sizes = [batch] * (samples // batch) + ([samples % batch] if samples % batch else [])

    def run():
        with torch.inference_mode(), autocast(device, dtype):
            for size in sizes:
                model(x[:size])

    return run


def interleaved(fns: dict, repeats: int, device: str = "cpu", warm: dict | None = None, cpu: dict | None = None):
    """
    Wall seconds of each callable in ``fns`` over ``repeats`` rounds, the callables interleaved (order reversed
    every other round) so that a slower moment of a shared machine hits all of them; ``warm`` (default ``fns``)
    runs once first. ``cpu``, if given, receives the CPU seconds of this process (all its threads) per run: less
    sensitive than wall time to other processes on the machine.
    """
    for fn in (warm or fns).values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return times


def spread(values) -> dict:
    values = [float(v) for v in values]
    return {"best": min(values), "median": statistics.median(values), "worst": max(values), "all": values}


def markdown(headers, rows) -> str:
    """A Markdown table (strings as given, numbers as they are formatted by the caller)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("-" * (len(h) + 2) for h in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"torch": torch.__version__, "cpu": model, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def save(out_dir, name: str, figures: dict) -> None:
    if out_dir is None:
        return
    path = Path(out_dir) / f"certify_scale_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
    print(f"(figures written to {path})")


def trained_digits_cnn(epochs: int = 15, sigma: float = 0.25):
    """DigitsCNN trained briefly with Gaussian noise (sigma) on the training digits, so that records mean something."""
    from art_some.data import digits_arrays
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in digits_arrays("train"))
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx] + sigma * torch.randn_like(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def same_records(a: list[dict], b: list[dict], ignore=("seconds",)) -> tuple[bool, str]:
    """Whether two record lists agree in every field but ``ignore``; else the first difference in words."""
    if len(a) != len(b):
        return False, f"{len(a)} records against {len(b)}"
    for ra, rb in zip(a, b):
        ra, rb = ({k: v for k, v in r.items() if k not in ignore} for r in (ra, rb))
        if ra != rb:
            keys = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
            return False, f"index {ra.get('idx')}: {', '.join(f'{k} {ra.get(k)!r} vs {rb.get(k)!r}' for k in keys)}"
    return True, f"{len(a)} records equal (but {', '.join(ignore)})"


# ------------------------------------------------------------------------------------------------------------------
# 1. Throughput against the limit
# ------------------------------------------------------------------------------------------------------------------
def bench_throughput(args) -> dict:
    rows = []
    for spec in args.throughput_models.split(","):
        name, inputs, batch, *rest = spec.split(":")
        inputs, batch, shape = int(inputs), int(batch), SHAPES[name]
        repeats = int(rest[0]) if rest else args.repeats
        model = build_model(name)
        est = make_estimator(model, shape, "cpu", args.n0, batch)
        x = np.random.default_rng(0).random((inputs, *shape), dtype=np.float32)
        samples = inputs * (args.n0 + args.n)
        fns = {"raw": forward_pass(model, shape, samples, batch),
               "certify": lambda: est.certify(x, n=args.n, batch_size=batch)}
        warm = {"raw": forward_pass(model, shape, 4 * batch, batch),
                "certify": lambda: est.certify(x[:1], n=min(args.n, 1000), batch_size=batch)}
        print(f"throughput: {name}, {inputs} input(s) x {samples // inputs} draws, batch {batch}, "
              f"{repeats} rounds ...", flush=True)
        load, cpu = os.getloadavg()[0], {}
        times = interleaved(fns, repeats, warm=warm, cpu=cpu)
        raw, cert = spread(times["raw"]), spread(times["certify"])
        paired = [r / c for r, c in zip(times["raw"], times["certify"])]
        rows.append({"model": name, "inputs": inputs, "n0": args.n0, "n": args.n, "batch": batch, "samples": samples,
                     "repeats": repeats, "raw_seconds": raw, "certify_seconds": cert, "raw_rate": samples / raw["best"],
                     "certify_rate": samples / cert["best"], "ratio": raw["best"] / cert["best"],
                     "paired_ratios": paired, "raw_cpu_seconds": spread(cpu["raw"]),
                     "certify_cpu_seconds": spread(cpu["certify"]),
                     "cpu_ratio": min(cpu["raw"]) / min(cpu["certify"]), "load_before": load,
                     "load_after": os.getloadavg()[0]})
    print(markdown(["model", "inputs x draws", "batch", "raw samples/s", "certify samples/s", "x raw (best/best)",
                    "x raw per round", "x raw (CPU time)", "load"],
                   [[r["model"], f"{r['inputs']} x {r['n0'] + r['n']}", r["batch"], f"{r['raw_rate']:.0f}",
                     f"{r['certify_rate']:.0f}", f"{r['ratio']:.3f}",
                     f"{min(r['paired_ratios']):.3f}-{max(r['paired_ratios']):.3f}", f"{r['cpu_ratio']:.3f}",
                     f"{r['load_before']:.1f}-{r['load_after']:.1f}"] for r in rows]))
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------------------------
# 2. Scaling over processes
# ------------------------------------------------------------------------------------------------------------------
def scaling_worker(spec: dict) -> None:
    """One certifying process (one thread): build everything, say READY, wait for a line, certify, say RESULT."""
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    from art_some.data import digits
    from art_some.evaluation.runner import certify_dataset
    from art_some.models import DigitsCNN

    model = DigitsCNN()
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    est = make_estimator(model.eval(), DIGITS, "cpu", spec["n0"], spec["batch"])
    dataset, _ = digits(split="test")
    shard = tuple(spec["shard"]) if spec["shard"] else None
    print("READY", flush=True)
    sys.stdin.readline()
    start, start_cpu = time.time(), time.process_time()
    certify_dataset(est, dataset, range(spec["inputs"]), spec["out"], n=spec["n"], progress=False, shard=shard)
    print("RESULT " + json.dumps({"start": start, "end": time.time(), "cpu": time.process_time() - start_cpu,
                                  "threads": torch.get_num_threads()}), flush=True)


def _wait_for(proc, prefix: str) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    proc.wait()
    raise RuntimeError(f"a scaling worker ended (exit code {proc.returncode}) before saying {prefix.strip()}")


def run_processes(specs: list[dict]) -> tuple[float, list[dict]]:
    """Start one worker per spec (one thread each), let them all start together, return the wall time and theirs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for spec in specs]
    try:
        for proc in procs:
            _wait_for(proc, "READY")
        start = time.time()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(_wait_for(proc, "RESULT ")) for proc in procs]
        wall = max(r["end"] for r in results) - start
    finally:
        for proc in procs:
            proc.wait()
    return wall, [{"seconds": r["end"] - r["start"], "cpu_seconds": r["cpu"], "threads": r["threads"]}
                  for r in results]


def bench_scaling(args) -> dict:
    from art_some.runs.records import read_jsonl
    from art_some.runs.shards import merge_records, shard_path

    k = args.scaling_k
    tmp = Path(tempfile.mkdtemp(prefix="certify_scale_"))
    weights = tmp / "digits_cnn.pt"
    torch.save(trained_digits_cnn().state_dict(), weights)
    base = {"weights": str(weights), "n0": args.n0, "n": args.scaling_n, "inputs": args.scaling_inputs,
            "batch": args.scaling_batch}
    print(f"scaling: digits CNN, {args.scaling_inputs} inputs x {args.n0 + args.scaling_n} draws, 1 process vs {k}, "
          f"one thread each, {args.scaling_repeats} rounds ...", flush=True)
    rounds, checks = [], []
    for r in range(args.scaling_repeats):
        run = tmp / f"round{r}"
        run.mkdir()
        single_out, merged_out = run / "single.jsonl", run / "merged.jsonl"
        jobs = {"single": [{**base, "shard": None, "out": str(single_out)}],
                "sharded": [{**base, "shard": [i, k], "out": str(shard_path(merged_out, (i, k)))} for i in range(k)]}
        entry = {}
        for name in list(jobs) if r % 2 == 0 else list(jobs)[::-1]:
            load = os.getloadavg()[0]
            wall, per_process = run_processes(jobs[name])
            entry[name] = {"wall": wall, "processes": per_process, "load_before": load}
            print(f"  round {r}: {name}: {wall:.1f} s (load average before: {load:.2f})", flush=True)
        entry["efficiency"] = entry["single"]["wall"] / (k * entry["sharded"]["wall"])
        rounds.append(entry)
        start = time.perf_counter()
        merged = merge_records([job["out"] for job in jobs["sharded"]], merged_out)
        merge_seconds = time.perf_counter() - start
        ok, words = same_records(read_jsonl(single_out), merged)
        checks.append({"equal": ok, "detail": words, "merge_seconds": merge_seconds})
    t1 = spread([e["single"]["wall"] for e in rounds])
    tk = spread([e["sharded"]["wall"] for e in rounds])
    efficiency = t1["best"] / (k * tk["best"])
    per_round = [e["efficiency"] for e in rounds]
    cpu = {name: ", ".join("/".join(f"{p['cpu_seconds']:.1f}" for p in e[name]["processes"]) for e in rounds)
           for name in ("single", "sharded")}
    print(markdown(["run", "processes x threads", "wall s (best)", "wall s (all rounds)", "CPU s per process"],
                   [["single", "1 x 1", f"{t1['best']:.1f}", ", ".join(f"{v:.1f}" for v in t1["all"]), cpu["single"]],
                    [f"{k} shards", f"{k} x 1", f"{tk['best']:.1f}", ", ".join(f"{v:.1f}" for v in tk["all"]),
                     cpu["sharded"]]]))
    print(f"efficiency T_1 / ({k} T_{k}) = {efficiency:.3f} (best/best); per round "
          f"{', '.join(f'{v:.3f}' for v in per_round)}; merged records: {checks[0]['detail']}")
    return {"k": k, "n0": args.n0, "n": args.scaling_n, "inputs": args.scaling_inputs, "batch": args.scaling_batch,
            "model": "digits_cnn (trained 15 epochs with noise)", "t1": t1, "tk": tk, "efficiency": efficiency,
            "efficiency_per_round": per_round, "rounds": rounds, "records_check": checks}


# ------------------------------------------------------------------------------------------------------------------
# 3. Small n: the batched runner against one call per input
# ------------------------------------------------------------------------------------------------------------------
def bench_small_n(args) -> dict:
    from art_some.data import digits, digits_arrays
    from art_some.evaluation.runner import certify_dataset, inputs_per_call
    from art_some.runs.header import input_hash
    from art_some.runs.records import records_from_result

    n, batch = args.small_n, args.small_batch
    est = make_estimator(trained_digits_cnn(), DIGITS, "cpu", args.n0, batch)
    dataset, _ = digits(split="test")
    x, y = digits_arrays("test")
    indices = list(range(len(dataset)))[: args.small_inputs]
    per_call = inputs_per_call(est, n, None, None)
    tmp, runs, got = Path(tempfile.mkdtemp(prefix="certify_small_n_")), itertools.count(), {}

    def records(result, chunk):
        return [{**rec, "input_sha256": input_hash(x[i])}
                for rec, i in zip(records_from_result(result, y[chunk], chunk, "smoothed"), chunk)]

    def runner():
        got["runner"] = certify_dataset(est, dataset, indices, tmp / f"run{next(runs)}.jsonl", n=n, progress=False)

    def per_input():
        got["per_input"] = [rec for i in indices for rec in records(est.certify_detailed(x[i : i + 1], n=n,
                                                                                         indices=[i]), [i])]

    def chunks():
        got["chunks"] = [rec for s in range(0, len(indices), per_call)
                         for rec in records(est.certify_detailed(x[indices[s : s + per_call]], n=n,
                                                                 indices=indices[s : s + per_call]),
                                            indices[s : s + per_call])]

    print(f"small n: {len(indices)} digits, n0={args.n0}, n={n}, noise_batch_size={batch} ({per_call} inputs per "
          f"call), {args.small_repeats} rounds ...", flush=True)
    times = interleaved({"runner": runner, "per_input": per_input, "chunks": chunks}, args.small_repeats)
    figures = {name: spread(t) for name, t in times.items()}
    checks = {"per_input": same_records(got["runner"], got["per_input"]),
              "chunks": same_records(got["runner"], got["chunks"])}
    labels = {"runner": f"certify_dataset ({per_call} inputs per call, JSONL + TSV written)",
              "chunks": f"certify_detailed on chunks of {per_call} (no files)",
              "per_input": "certify_detailed one input per call (no files)"}
    best_per_input = figures["per_input"]["best"]
    print(markdown(["how", "seconds (best)", "all rounds", "inputs/s", "speed-up vs per input"],
                   [[labels[k], f"{v['best']:.2f}", ", ".join(f"{t:.2f}" for t in v["all"]),
                     f"{len(indices) / v['best']:.0f}", f"{best_per_input / v['best']:.1f}x"]
                    for k, v in figures.items()]))
    print(f"records: per input vs runner: {checks['per_input'][1]}; chunks vs runner: {checks['chunks'][1]}")
    return {"inputs": len(indices), "n0": args.n0, "n": n, "noise_batch_size": batch, "inputs_per_call": per_call,
            "seconds": figures, "speedup_runner": best_per_input / figures["runner"]["best"],
            "speedup_chunks": best_per_input / figures["chunks"]["best"],
            "records_check": {k: {"equal": ok, "detail": words} for k, (ok, words) in checks.items()}}


# ------------------------------------------------------------------------------------------------------------------
# 4. Memory flat in n
# ------------------------------------------------------------------------------------------------------------------
def bench_memory(args) -> dict:
    from certify_throughput import memory_added  # same folder: the fresh-process RSS measurement lives there

    rows = []
    for n in (int(v) for v in args.memory_n.split(",")):
        added = [memory_added("art-some", "cpu", n) for _ in range(args.memory_repeats)]
        rows.append({"n": n, "added_bytes": added})
        print(f"memory: n={n}: {', '.join('failed' if a is None else f'{a / 2**20:.0f} MiB' for a in added)}",
              flush=True)
    print(markdown(["n", "peak memory added (MiB, each fresh process)"],
                   [[f"{r['n']:,}", ", ".join("failed" if a is None else f"{a / 2**20:.0f}" for a in r["added_bytes"])]
                    for r in rows]))
    return {"model": "certify_throughput.tiny_model (conv 3->8, linear)", "input": "one 3x32x32", "n0": 100,
            "noise_batch_size": 1000, "rows": rows}


BENCHES = {"throughput": bench_throughput, "scaling": bench_scaling, "small_n": bench_small_n,
           "memory": bench_memory}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--quick", action="store_true", help="tiny settings, a smoke run (writes no files unless "
                                                             "--out-dir is given)")
    parser.add_argument("--out-dir", default=None, help=f"where the JSON files go (default {RESULTS})")
    parser.add_argument("--n0", type=int, default=100, help="selection draws (the estimator's sample_size)")
    parser.add_argument("--n", type=int, default=10_000, help="estimation draws for throughput")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds for throughput (unless a model "
                                                                 "names its own)")
    parser.add_argument("--throughput-models",
                        default="cifar_resnet20:1:250:5,cifar_resnet110:1:250:3,digits_cnn:20:1000:5",
                        help="name:inputs:batch[:rounds],...")
    parser.add_argument("--scaling-k", type=int, default=2)
    parser.add_argument("--scaling-n", type=int, default=10_000)
    parser.add_argument("--scaling-inputs", type=int, default=360)
    parser.add_argument("--scaling-batch", type=int, default=1000)
    parser.add_argument("--scaling-repeats", type=int, default=2)
    parser.add_argument("--small-n", type=int, default=100)
    parser.add_argument("--small-inputs", type=int, default=360)
    parser.add_argument("--small-batch", type=int, default=1000)
    parser.add_argument("--small-repeats", type=int, default=5)
    parser.add_argument("--memory-n", default="1000,10000,100000")
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default torch's; "
                                                                   "the scaling workers always use one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return scaling_worker(json.loads(args.worker))
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out_dir or (None if args.quick else RESULTS)
    if args.quick:
        args.n, args.repeats, args.throughput_models = 300, 2, "cifar_resnet20:1:100,digits_cnn:2:500"
        args.scaling_n, args.scaling_inputs, args.scaling_repeats = 500, 20, 1
        args.small_inputs, args.small_repeats, args.memory_n, args.memory_repeats = 40, 2, "1000,10000", 1
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in args.only.split(","):
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        start = time.perf_counter()
        figures = BENCHES[name](args)
        figures["benchmark_seconds"] = time.perf_counter() - start
        save(out_dir, name, figures)


if __name__ == "__main__":
    main()
