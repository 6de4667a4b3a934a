"""
Certification throughput on a GPU: ``SmoothedClassifier.certify`` against the base model's raw forward pass at
the same precision, memory format and batch size, for each speed option of the vote function (precision fp32,
bf16, fp16; channels_last; compile), a batch-size sweep, and the peak GPU memory of each.

    python benchmarks/certify_gpu.py --out benchmarks/results/gpu.json          # CUDA (a few minutes on one GPU)
    python benchmarks/certify_gpu.py --device cpu --quick --out /tmp/gpu.json   # a smoke run of the script on CPU

For each model (CIFAR ResNet-20 and ResNet-110, randomly initialised, eval mode, random 3x32x32 inputs) and each
variant, the raw limit is ``model(x)`` under ``torch.inference_mode()`` with the same autocast dtype, memory format
and (for ``compile``) a ``torch.compile``d module, run on the same number of inputs (inputs x (n0 + n)) in
batches of the same size. Compared runs are interleaved; figures are the best of ``--repeats`` after a warm-up
run (which also compiles). Peak memory is ``torch.cuda.max_memory_allocated`` above what was allocated before
the call (not measured on CPU). Rows are written to the JSON file as they finish, so a run cut short keeps them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_scale import (  # noqa: E402  (same folder)
    SHAPES,
    build_model,
    forward_pass,
    interleaved,
    machine,
    make_estimator,
    markdown,
    spread,
    sync,
)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = "fp32,bf16,fp16,channels_last,channels_last+bf16,compile,compile+bf16"


def parse_variant(variant: str) -> dict:
    """``"channels_last+bf16"`` -> the estimator's options ``precision``, ``channels_last``, ``compile``."""
    parts = variant.split("+")
    unknown = set(parts) - set(DTYPES) - {"channels_last", "compile"}
    if unknown:
        raise ValueError(f"unknown variant part(s) {', '.join(sorted(unknown))} in {variant!r}")
    precision = next((p for p in parts if p in DTYPES), "fp32")
    return {"precision": precision, "channels_last": "channels_last" in parts, "compile": "compile" in parts}


def peak_memory(fn, device: str) -> int | None:
    """Bytes that ``fn`` allocates on the GPU at its peak, above what was allocated before (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - before


def measure(name: str, variant: str, batch: int, args) -> dict:
    """Raw forward and certify throughput (and peak memory) of one model, variant and batch size."""
    options = parse_variant(variant)
    device, shape = args.device, SHAPES[name]
    row = {"model": name, "variant": variant, "batch": batch, **options}
    try:
        model = build_model(name, device)
        if options["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        raw_model = torch.compile(model) if options["compile"] else model
        est = make_estimator(model, shape, device, args.n0, batch, **options)
        x = np.random.default_rng(0).random((args.inputs, *shape), dtype=np.float32)
        samples = args.inputs * (args.n0 + args.n)
        raw = forward_pass(raw_model, shape, samples, batch, device, DTYPES[options["precision"]],
                           options["channels_last"])
        result = {}

        def cert():
            result["predict"], result["radius"] = est.certify(x, n=args.n, batch_size=batch)

        start = time.perf_counter()
        times = interleaved({"raw": raw, "certify": cert}, args.repeats, device)
        raw_s, cert_s = spread(times["raw"]), spread(times["certify"])
        row.update(samples=samples, raw_seconds=raw_s, certify_seconds=cert_s, raw_rate=samples / raw_s["best"],
                   certify_rate=samples / cert_s["best"], ratio=raw_s["best"] / cert_s["best"],
                   paired_ratios=[r / c for r, c in zip(times["raw"], times["certify"])],
                   raw_peak_bytes=peak_memory(raw, device), certify_peak_bytes=peak_memory(cert, device),
                   predict=result["predict"].tolist(), radius=result["radius"].tolist(),
                   seconds=time.perf_counter() - start)
    except Exception as err:  # e.g. compile without a working compiler, fp16 autocast where unsupported
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"  {name} {variant} batch {batch}: "
          + (row["error"] if "error" in row else f"raw {row['raw_rate']:.0f}/s, certify {row['certify_rate']:.0f}/s, "
             f"{row['ratio']:.3f}x"), file=sys.stderr, flush=True)
    return row


def mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def table(rows, first: str) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["model"], r[first], "failed", "", "", "", "", r["error"][:80]])
            continue
        same = r.get("same_predict_as_fp32")
        out.append([r["model"], r[first], f"{r['raw_rate']:.0f}", f"{r['certify_rate']:.0f}", f"{r['ratio']:.3f}",
                    mib(r["raw_peak_bytes"]), mib(r["certify_peak_bytes"]),
                    "" if same is None else f"{same}/{len(r['predict'])} same predictions as fp32"])
    return markdown(["model", first, "raw samples/s", "certify samples/s", "x raw", "raw peak MiB",
                     "certify peak MiB", "notes"], out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings (1 input, n=200, small batches)")
    parser.add_argument("--out", default="benchmarks/results/gpu.json", help="JSON file for the figures")
    parser.add_argument("--models", default="cifar_resnet20,cifar_resnet110")
    parser.add_argument("--variants", default=VARIANTS, help=f"comma-separated, parts joined by + (default {VARIANTS})")
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=4000, help="batch size of the variant comparison")
    parser.add_argument("--sweep", default="500,1000,2000,4000,8000,16000", help="batch sizes of the sweep")
    parser.add_argument("--sweep-model", default="cifar_resnet20")
    parser.add_argument("--sweep-variant", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.inputs, args.n, args.batch, args.sweep, args.repeats = "cifar_resnet20", 1, 200, 100, \
            "50,100", 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device (give --device cpu for a smoke run)")
    for variant in args.variants.split(","):
        parse_variant(variant)
    info = machine()
    if args.device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    capability=list(torch.cuda.get_device_capability()))
    figures = {"machine": info, "settings": {k: v for k, v in vars(args).items()}, "variants": [], "sweep": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        out.write_text(json.dumps(figures, indent=2) + "\n")

    print(f"{info.get('gpu', 'CPU')}; torch {torch.__version__}; {args.inputs} inputs x {args.n0 + args.n} draws",
          file=sys.stderr)
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            figures["variants"].append(measure(name, variant, args.batch, args))
            write()
    for batch in (int(b) for b in args.sweep.split(",")):
        figures["sweep"].append(measure(args.sweep_model, args.sweep_variant, batch, args))
        write()
    for r in figures["variants"]:
        fp32 = next((f for f in figures["variants"] if f["model"] == r["model"] and f["variant"] == "fp32"
                     and "error" not in f), None)
        if fp32 is not None and "error" not in r and r is not fp32:
            r["same_predict_as_fp32"] = int(np.sum(np.equal(r["predict"], fp32["predict"])))
    write()
    print(f"device: {info.get('gpu', 'CPU')}; torch {torch.__version__}; {args.inputs} inputs, n0={args.n0}, "
          f"n={args.n}; best of {args.repeats}\n")
    print(f"Variants at batch {args.batch}:\n")
    print(table(figures["variants"], "variant"))
    print(f"\nBatch sweep, {args.sweep_model} {args.sweep_variant}:\n")
    print(table(figures["sweep"], "batch"))
    print(f"\n(figures written to {out})")


if __name__ == "__main__":
    main()
