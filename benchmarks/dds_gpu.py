"""
Throughput of diffusion denoised smoothing (Carlini et al.'s CIFAR-10 pipeline) on a GPU: the released ADM CIFAR-10
config (improved-diffusion, 52.5M parameters, random weights) denoising 32 x 32 images in one step, then a ViT-B/16
from timm (random weights) on the bicubic resize to 224 x 224. For each speed variant of the vote (fp32, bf16, fp16,
channels-last, torch.compile), the raw limit (denoiser + classifier forward passes per second at the batch size,
under inference mode with the same autocast) against CERTIFY's images per second and forward passes per second at
n = 10,000 and 100,000 (n0 = 100), and sequential CERTIFY in fixed-radius mode (radii 0.25 and 0.5), which stops
each input once both radii are decided.

    python benchmarks/dds_gpu.py --out benchmarks/results/dds_gpu.json             # CUDA (ADM + ViT-B/16)
    python benchmarks/dds_gpu.py --toy --device cpu --out /tmp/dds_toy.json         # CPU smoke run, toy sizes

``--toy`` swaps in a small ADM config (32 channels), timm's ``test_vit`` at 64 px, one image, batch 50 and
n = 50 / 200, so the script runs in a minute or two on a CPU. Rows are written to the JSON file as they finish.
The published reference point: Carlini et al. quote 825 images per second for CIFAR-10 with ViT-B at 224 on an
A100 at batch 1,000 (ethz issue #1), i.e. about 121 s per certified image at N = 100,000.

| Paper link: https://arxiv.org/abs/2206.10550
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from art_some import DenoisedMultiScaleClassifier
from art_some.models import adm
from art_some.models.classifiers import classifier_preprocessing, load_classifier
from art_some.models.diffusion import DiffusionDenoiser, randomize

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = "fp32,bf16,fp16,channels_last+bf16,compile+bf16"
TOY_ADM = dict(family="improved", image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
               attention_resolutions="", num_heads=2, learn_sigma=True, diffusion_steps=4000,
               noise_schedule="cosine", dropout=0.3)


def parse_variant(variant: str) -> dict:
    parts = variant.split("+")
    unknown = set(parts) - set(DTYPES) - {"channels_last", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant part(s) {', '.join(sorted(unknown))} in {variant!r}")
    return {"precision": next((p for p in parts if p in DTYPES), "fp32"), "channels_last": "channels_last" in parts,
            "compile": "compile" in parts}


def build(toy: bool, device: str, seed: int = 0):
    """The ADM denoiser (random weights, the research init's zero outputs filled in) and the timm classifier."""
    torch.manual_seed(seed)
    config = TOY_ADM if toy else "adm-cifar10-uncond-50m"
    unet = randomize(adm.ADMUNet(config), seed, scale=0.02)
    cfg = unet.config
    denoiser = DiffusionDenoiser(unet.eval(), adm.adm_alphas_cumprod(cfg.noise_schedule, cfg.diffusion_steps),
                                 rescale_timesteps=cfg.rescale_timesteps)
    if toy:
        model, meta = load_classifier("timm:test_vit", num_classes=10, img_size=64)
    else:
        model, meta = load_classifier("timm:vit_base_patch16_224", num_classes=10)
    return denoiser.to(device), model.to(device), meta


class DenoiseThenClassify(torch.nn.Module):
    """The DDS base classifier at one sigma as one network: resize and normalise after denoising, as the cascade."""

    def __init__(self, denoiser, model, meta, sigma: float):
        super().__init__()
        self.denoiser, self.model, self.sigma = denoiser, model, sigma
        pre = classifier_preprocessing(meta, (3, 32, 32))
        mean, std = pre["preprocessing"]
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(std))
        self.resize = pre.get("preprocessing_defences", [None])[0]

    def forward(self, z):
        x = self.denoiser(z, self.sigma)
        x = self.resize.forward(x)[0] if self.resize is not None else x
        return self.model((x - self.mean) / self.std)


def sequential_estimator(denoiser, model, meta, device: str, batch: int, sigma: float, **speed):
    """
    A plain SmoothedClassifier over the same base classifier: sequential CERTIFY is not available for the cascade
    object (even with one level), and one level of DDS is exactly Cohen's smoothing of classifier(denoiser(z)).
    """
    from art_some import SmoothedClassifier

    net = DenoiseThenClassify(denoiser, model, meta, sigma).to(device).eval()
    return SmoothedClassifier(net, torch.nn.CrossEntropyLoss(), (3, 32, 32), 10, clip_values=(0.0, 1.0),
                              device_type="gpu" if device == "cuda" else "cpu", sample_size=100, scale=sigma,
                              noise_batch_size=batch, seed=0, **speed)


def estimator(denoiser, model, meta, device: str, batch: int, sigma: float, **speed):
    return DenoisedMultiScaleClassifier(
        model, None, (3, 32, 32), 10, denoiser=denoiser, sigmas=(sigma,), clip_values=(0.0, 1.0),
        device_type="gpu" if device == "cuda" else "cpu", sample_size=100, noise_batch_size=batch, seed=0,
        **classifier_preprocessing(meta, (3, 32, 32), "gpu" if device == "cuda" else "cpu"), **speed)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def raw_rate(est, device: str, batch: int, sigma: float, repeats: int) -> float:
    """Forward passes per second of classifier(denoiser(z)) on one batch, as the vote runs it, best of repeats."""
    z = torch.rand(batch, 3, 32, 32, device=device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first one warms up (and compiles)
            sync(device)
            start = time.perf_counter()
            est.level_vote(z, sigma)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return batch / best


def certify_rate(est, x, n: int, batch: int, sequential: bool) -> dict:
    start = time.perf_counter()
    if sequential:
        res = est.certify_sequential(x, n=n, batch_size=batch, radii=[0.25, 0.5])
        draws = float(np.sum(res.draws)) if res.draws is not None else len(x) * n
    else:
        res = est.certify_detailed(x, n=n, batch_size=batch)
        draws = len(x) * n
    seconds = time.perf_counter() - start
    passes = draws + len(x) * 100
    return {"seconds": seconds, "images_per_s": len(x) / seconds, "forward_passes_per_s": passes / seconds,
            "certified": int(np.sum(res.predict >= 0))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--toy", action="store_true", help="Toy sizes (CPU smoke run).")
    parser.add_argument("--variants", default=VARIANTS, help=f"Comma-separated (default {VARIANTS}).")
    parser.add_argument("--n", default=None, help="Comma-separated n (default 10000,100000; toy 50,200).")
    parser.add_argument("--inputs", type=int, default=None, help="Images certified per n (default 4; toy 1).")
    parser.add_argument("--batch", type=int, default=None, help="Noisy images per forward pass (default 1000).")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    toy = args.toy
    ns = [int(v) for v in (args.n or ("50,200" if toy else "10000,100000")).split(",")]
    inputs = args.inputs or (1 if toy else 4)
    batch = args.batch or (50 if toy else 1000)
    if args.device == "cpu":
        variants = [v for v in args.variants.split(",") if "fp16" not in v and "compile" not in v] or ["fp32"]
    else:
        variants = args.variants.split(",")
    denoiser, model, meta = build(toy, args.device)
    x = np.random.default_rng(0).random((inputs, 3, 32, 32)).astype(np.float32)
    rows = []
    result = {"machine": {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
                          or platform.machine(), "torch": torch.__version__},
              "setup": {"toy": toy, "adm": denoiser.unet.config.as_dict(), "classifier": meta["model"],
                        "batch": batch, "sigma": args.sigma, "inputs": inputs, "n0": 100},
              "rows": rows}
    for variant in variants:
        speed = parse_variant(variant)
        est = estimator(denoiser, model, meta, args.device, batch, args.sigma, **speed)
        row = {"variant": variant, "raw_forward_passes_per_s": raw_rate(est, args.device, batch, args.sigma,
                                                                         args.repeats)}
        for n in ns:
            row[f"certify_n{n}"] = certify_rate(est, x, n, batch, sequential=False)
            row[f"certify_n{n}"]["fraction_of_raw"] = (row[f"certify_n{n}"]["forward_passes_per_s"]
                                                       / row["raw_forward_passes_per_s"])
        seq = sequential_estimator(denoiser, model, meta, args.device, batch, args.sigma, **speed)
        row[f"sequential_radii_n{ns[-1]}"] = certify_rate(seq, x, ns[-1], batch, sequential=True)
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"{variant:>20}: raw {row['raw_forward_passes_per_s']:.0f} passes/s; "
              + "; ".join(f"n={n}: {row[f'certify_n{n}']['images_per_s']:.3g} img/s "
                          f"({row[f'certify_n{n}']['fraction_of_raw']:.0%} of raw)" for n in ns)
              + f"; sequential n={ns[-1]}: {row[f'sequential_radii_n{ns[-1]}']['images_per_s']:.3g} img/s",
              flush=True)


if __name__ == "__main__":
    main()
