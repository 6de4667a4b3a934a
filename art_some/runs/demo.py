"""
The demo behind ``art-some demo``: train a small CNN on the embedded digits with Gaussian noise (or reuse the one
trained before), certify the test split into resumable records and plot certified accuracy.
"""
from __future__ import annotations

import shutil
from pathlib import Path


def run_demo(output_dir="art_some_demo", sigma: float = 0.25, epochs: int = 30, n0: int = 100, n: int = 10_000,
             alpha: float = 0.001, seed: int = 0, max_inputs: int | None = None, retrain: bool = False,
             device: str = "auto", echo=print):
    """
    Train (or reuse) and certify in ``output_dir``.

    :param retrain: Discard earlier outputs in ``output_dir`` and start over.
    :param device: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``.
    :param echo: Where progress lines go.
    :return: ``(records, paths)``: the records, and the ``records``, ``plot`` and ``model`` files.
    """
    import torch

    from art_some.data import digits, digits_arrays
    from art_some.evaluation import certify_dataset, plot_certified_accuracy
    from art_some.models import DigitsCNN, load_checkpoint, save_checkpoint
    from art_some.runs.estimator import build_estimator, resolve_device, run_info
    from art_some.trainers import GaussianAugmentationTrainer

    device = resolve_device(device)  # before any file is written: --device cuda without a GPU is refused
    out = Path(output_dir)
    if retrain and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, records_path = out / "model.safetensors", out / "records.jsonl"
    test_data, info = digits(split="test")
    trained = checkpoint.exists()
    if trained:
        model, meta = load_checkpoint(checkpoint)
        if meta.get("sigma") != sigma:
            raise ValueError(f"--sigma {sigma} differs from the model in {out} (sigma {meta.get('sigma')}); use "
                             "--retrain")
        echo(f"Reusing {checkpoint} (pass --retrain to train again)")
    else:
        torch.manual_seed(seed)
        model = DigitsCNN(num_classes=10)
    clf = build_estimator("smoothed", model, info, sigma=sigma, n0=n0, alpha=alpha, batch_size=1000, seed=seed,
                          device=device, optimizer=None if trained else torch.optim.Adam(model.parameters(), lr=1e-3))
    if not trained:
        x, y = digits_arrays("train")
        echo(f"Training DigitsCNN on {len(x)} digits with Gaussian noise (sigma={sigma}, {epochs} epochs)...")
        # No verbose=True: the epochs' bar only on a terminal, never in a log file.
        losses = GaussianAugmentationTrainer(clf, seed=seed).fit(x, y, batch_size=64, nb_epochs=epochs)
        echo(f"final training loss {losses[-1]:.3f}")
        save_checkpoint(checkpoint, model, "digits_cnn", {"num_classes": 10}, sigma=sigma, dataset="digits",
                        num_classes=10, input_shape=[1, 8, 8])
    indices = list(range(len(test_data)))[:max_inputs]
    echo(f"Certifying {len(indices)} test digits (n0={n0}, n={n}, alpha={alpha})...")
    records = certify_dataset(clf, test_data, indices, records_path, n=n, method="smoothed",
                              run_info=run_info("digits", "test", checkpoint),
                              hint="use --retrain (or another --output-dir) to start over")
    plot = out / "certified_accuracy.png"
    plot_certified_accuracy({f"digits, sigma={sigma}": records}, plot, title="art-some demo")
    return records, {"records": records_path, "plot": plot, "model": checkpoint}
