"""
What ``art-some train`` records about each epoch, and the warning when a run learns nothing.

After every epoch the run measures the model on fixed subsets of the training and the test split, clean and under
the training noise (the estimator's noise family at the training sigma, one draw per input, the same draws every
epoch), through the estimator's vote function, so that a multi-head or denoised method is measured as it will be
certified. One record per epoch goes to ``history.jsonl``, the same rows to ``history.csv`` and, on request, to
TensorBoard. Accuracies are fractions in [0, 1].

A run whose held-out accuracy (clean or under noise) is still near chance level at the end gets a warning: such a
model is nearly constant, and a constant classifier is certified, correctly, on every input of its one class.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from art_some.core.noise import seed_for
from art_some.core.streams import TRAINING, TRAINING_MONITOR_KEY

if TYPE_CHECKING:
    import torch

HISTORY_FILE = "history.jsonl"
CSV_FILE = "history.csv"
# The columns of history.csv, in order (a record from before the accuracies were measured leaves them empty).
COLUMNS = ("epoch", "loss", "lr", "seconds", "train_acc", "train_acc_noise", "heldout_acc", "heldout_acc_noise")
MONITOR_INPUTS = 500  # per split: a few forward passes per epoch, a small share of an epoch's cost
# "Near chance": below chance + 10% of the way from chance to perfect (19% on 10 balanced classes).
NEAR_CHANCE_SHARE = 0.1


@dataclass
class Split:
    """A fixed subset of one split: inputs and labels on the device."""

    x: "torch.Tensor"
    y: "torch.Tensor"

    @property
    def chance(self) -> float:
        """The accuracy of always answering the commonest class of the subset (1/C for balanced classes)."""
        import torch

        return float(torch.bincount(self.y).max()) / len(self.y)


def evenly_spaced(dataset, limit: int, device) -> Split:
    """
    ``limit`` items spread evenly over ``dataset`` (all of it if smaller): an image folder lists its classes in
    order, so the first items would be one class.
    """
    import numpy as np
    import torch

    positions = np.unique(np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round().astype(int))
    items = [dataset[int(i)] for i in positions]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float().to(device)
    y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long, device=device)
    return Split(x, y)


class EpochMonitor:
    """
    Accuracy of an estimator's vote function on fixed subsets of the training and test splits, clean and under the
    training noise.

    :param clf: The estimator being trained (its ``vote``, ``to_noise_space`` and ``make_noise``).
    :param splits: ``{"train": Split, "heldout": Split}``.
    :param sigma: The training noise level.
    :param seed: The run's seed (the noise draws are the TRAINING stage's monitor stream).
    """

    def __init__(self, clf, splits: dict, sigma: float, seed: int, batch_size: int = 250):
        self.clf, self.splits, self.batch_size = clf, splits, batch_size
        self.noise = clf.make_noise(sigma)
        self.seed = seed

    def measure(self) -> dict:
        """``{"train_acc", "train_acc_noise", "heldout_acc", "heldout_acc_noise"}`` of the model as it is now."""
        import torch

        record = {}
        with torch.no_grad():
            for name, split in self.splits.items():
                record[f"{name}_acc"] = self._accuracy(split, noisy=False)
                record[f"{name}_acc_noise"] = self._accuracy(split, noisy=True)
        return record

    def _accuracy(self, split: Split, noisy: bool) -> float:
        import torch

        generator = torch.Generator(device=split.x.device)
        generator.manual_seed(seed_for(self.seed, TRAINING, TRAINING_MONITOR_KEY))  # the same draws every epoch
        correct = 0
        for start in range(0, len(split.x), self.batch_size):
            x = split.x[start:start + self.batch_size]
            if noisy:
                z = self.clf.to_noise_space(x)
                eps = self.noise.unit(z.shape, generator, z.device)
                x = self.noise.perturb(z, eps, torch.arange(len(z), device=z.device))
            votes = self.clf.vote(x)
            if votes.dim() == 2:  # a rule that votes a tally per input (vote averaging): its top class
                votes = votes.argmax(dim=1)
            correct += int((votes == split.y[start:start + self.batch_size]).sum())
        return correct / len(split.x)


def epoch_line(record: dict, epochs: int) -> str:
    """The one line printed after each epoch (the rate last, as before the accuracies were measured)."""
    return (f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.1%}  "
            f"held-out {record['heldout_acc']:.1%} (noise {record['heldout_acc_noise']:.1%})  "
            f"{record['seconds']:.1f} s  lr {record['lr']:.4g}")


def as_records(history: list) -> list[dict]:
    """A resume state's history as records: states written before the accuracies were measured hold losses only."""
    return [h if isinstance(h, dict) else {"epoch": e + 1, "loss": float(h)} for e, h in enumerate(history)]


def jsonl_text(history: list[dict]) -> str:
    """``history.jsonl``: one JSON object per epoch."""
    return "".join(json.dumps(record) + "\n" for record in history)


def csv_text(history: list[dict]) -> str:
    """``history.csv``: the same rows, with the header :data:`COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def history_texts(history: list[dict]) -> dict[str, str]:
    """The files the history is exported to, by name, with their contents."""
    return {HISTORY_FILE: jsonl_text(history), CSV_FILE: csv_text(history)}


def tensorboard_class(folder):
    """
    TensorBoard's ``SummaryWriter`` class when ``folder`` is given (None otherwise), refused in one line when
    TensorBoard is not installed: called before the run writes anything (a writer creates its folder at once).
    """
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(f"--tensorboard {folder} needs the tensorboard package: pip install tensorboard (or leave "
                         "--tensorboard out; history.jsonl and history.csv hold the same numbers)") from None
    return SummaryWriter


def log_scalars(writer, record: dict) -> None:
    """One epoch's record as TensorBoard scalars (``loss``, ``lr``, ``seconds``, ``accuracy/<split>``)."""
    if writer is None:
        return
    for key in COLUMNS[1:]:
        if record.get(key) is not None:
            tag = f"accuracy/{key.removesuffix('_acc').replace('_acc_', '_')}" if "_acc" in key else key
            writer.add_scalar(tag, record[key], record["epoch"])
    writer.flush()


def chance_warning(record: dict, chance: float, *, sigma: float, steps: int, classes: int,
                   loss_is_cross_entropy: bool) -> str | None:
    """
    The warning for a run whose held-out accuracy, clean or under noise, is near chance at its last epoch, or whose
    cross-entropy loss is still near ln(classes) (None otherwise): what was measured, what it means for the
    certificates, and what to change.

    :param record: The last epoch's record.
    :param chance: The accuracy of always answering the commonest class of the held-out subset.
    :param steps: Optimizer steps the run took.
    """
    if "heldout_acc" not in record:
        return None
    bar = chance + NEAR_CHANCE_SHARE * (1.0 - chance)
    clean, noisy = record["heldout_acc"], record["heldout_acc_noise"]
    # A cross-entropy near ln(classes) is chance level too, whatever the accuracy measured on a few hundred inputs.
    loss_near = loss_is_cross_entropy and record["loss"] > 0.97 * math.log(classes)
    if noisy > bar and clean > bar and not loss_near:
        return None
    what = (f"held-out accuracy under the training noise (sigma {sigma:g}) is {noisy:.1%} (clean {clean:.1%})"
            if clean > bar >= noisy else
            f"held-out accuracy {clean:.1%} clean and {noisy:.1%} under the training noise (sigma {sigma:g})")
    loss = ""
    if loss_near:
        loss = f"; the training loss {record['loss']:.3f} is near chance level (ln {classes} = {math.log(classes):.2f})"
    return (f"Warning: after {record['epoch']} epochs ({steps} optimizer steps) the model is near chance level: "
            f"{what}, against {chance:.1%} for always answering the commonest class{loss}. Its smoothed classifier "
            "is nearly constant, so certify would certify the inputs of one class and abstain or fail on the rest. "
            "Train longer (--epochs), or change --lr, --optimizer or --batch-size (each method's defaults are in "
            "docs/trainers.rst), or train at a smaller --sigma.")
