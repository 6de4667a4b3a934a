"""
Certified robustness transfer (CRT; Vaishnavi et al., NeurIPS 2022): distil a certifiably robust teacher's base
classifier into a student by matching raw logits on the *same* noisy inputs, at a fraction of the cost of robust
training (one extra teacher forward per step; no attack, no extra noise draws).

| Paper link: https://arxiv.org/abs/2210.14283
"""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from art_some.trainers.base import SmoothingTrainer

if TYPE_CHECKING:
    import torch


def transfer_loss(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor") -> "torch.Tensor":
    """
    L_CRT = mean_b ||z_s(x_b) - z_t(x_b)||_2: the *un-squared* per-example L2 distance between raw logits (no
    temperature, no softmax), averaged over the batch, as in the official ``helpers/xfer.py``.
    """
    return (student_logits - teacher_logits).flatten(1).norm(dim=1).mean()


class CRTTrainer(SmoothingTrainer):
    """
    CRT's student training: one Gaussian draw per example, x_noisy = x + delta in raw input space; the teacher
    (eval mode, no gradient) and the student see the identical x_noisy, and

        L = w * mean_b ||z_s(x_noisy) - z_t(x_noisy)||_2 + (1 - w) * CE(z_s(x_noisy), y),   w = 1 by default,

    so with w = 1 the labels are not used. The student is then certified as an ordinary fixed-sigma smoothed
    classifier: its certificate does not depend on the teacher.

    The learning rate follows the official schedule by default: x0.1 at 50% and 75% of all *iterations*, set before
    every optimizer step (so pass no epoch scheduler). The official code always runs it; here it spans
    ``total_epochs``, or, when that is not given, the epochs of the first :meth:`fit` call (``fit(x, y,
    nb_epochs=N)`` decays at 50% and 75% of N epochs). A run split over several ``fit`` calls needs
    ``total_epochs``; ``lr_schedule=False`` turns the schedule off (a constant rate, or your own epoch scheduler).

    | Paper link: https://arxiv.org/abs/2210.14283

    :param classifier: The student, a :class:`~art_some.SmoothedClassifier` with an optimizer.
    :param teacher: The robust teacher's base classifier (required): a :class:`~art_some.SmoothedClassifier` (its
                    own preprocessing and model are used), a ``torch.nn.Module`` returning logits (given the
                    student's preprocessing), or the path of a checkpoint saved by ``art-some train``.
    :param sigma: Training noise level (default: the student's ``scale``; the teacher should be robust at it).
    :param transfer_weight: w, the weight of the logit-matching term (1 in the paper's configs).
    :param total_epochs: Length of the run, for the per-iteration learning-rate milestones (None: the epochs of the
                         first ``fit`` call).
    :param milestones: Fractions of the total iterations at which the learning rate drops.
    :param lr_gamma: Factor of each drop.
    :param lr_schedule: Run the milestone schedule (default True, as the official code); False keeps the
                        optimizer's learning rate and accepts an epoch ``scheduler`` in ``fit``.
    :param seed: Seed of the noise and shuffling.
    """

    noises = None  # trains with whatever noise the classifier smooths with

    def __init__(self, classifier, teacher=None, sigma=None, transfer_weight: float = 1.0,
                 total_epochs: int | None = None, milestones=(0.5, 0.75), lr_gamma: float = 0.1,
                 lr_schedule: bool = True, seed: int = 0):
        # teacher defaults to None only so that its absence gets this message rather than a TypeError about
        # whichever other argument the caller did pass.
        if teacher is None:
            raise ValueError("CRT needs a teacher (teacher=...): a robust SmoothedClassifier, a torch.nn.Module "
                             "returning logits, or the path of a checkpoint saved by art-some train")
        super().__init__(classifier, sigma=sigma, seed=seed)
        if not 0.0 <= float(transfer_weight) <= 1.0:
            raise ValueError(f"transfer_weight must lie in [0, 1], got {transfer_weight!r}")
        if total_epochs is not None and (int(total_epochs) != total_epochs or total_epochs < 1):
            raise ValueError(f"total_epochs must be an integer >= 1 or None, got {total_epochs!r}")
        milestones = tuple(float(m) for m in milestones)
        if any(not 0.0 < m < 1.0 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1), got {milestones!r}")
        if not float(lr_gamma) > 0:
            raise ValueError(f"lr_gamma must be > 0, got {lr_gamma!r}")
        self.transfer_weight = float(transfer_weight)
        self.total_epochs = None if total_epochs is None else int(total_epochs)
        self._inferred_total = False
        self.lr_schedule = bool(lr_schedule)
        self.milestones = milestones
        self.lr_gamma = float(lr_gamma)
        self.teacher_forward = self._teacher(teacher)
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    @property
    def owns_lr_schedule(self) -> bool:
        """True when the trainer steps the learning rate itself (per iteration)."""
        return self.lr_schedule

    def _teacher(self, teacher):
        """A function from raw noisy inputs to the teacher's logits (eval mode, no gradient)."""
        import torch

        student = self._classifier
        if isinstance(teacher, (str, os.PathLike)):
            from art_some.models import load_checkpoint

            teacher, _ = load_checkpoint(teacher, device=str(student.device))
        if callable(getattr(teacher, "preprocess", None)) and isinstance(getattr(teacher, "model", None),
                                                                          torch.nn.Module):
            model, preprocess = teacher.model, teacher.preprocess
        elif isinstance(teacher, torch.nn.Module):
            model, preprocess = teacher.to(student.device), lambda z, training_mode=False: student.preprocess(z)
        else:
            raise ValueError("teacher must be a SmoothedClassifier, a torch.nn.Module or a checkpoint path, "
                             f"got {type(teacher).__name__}")
        if model is student.model:
            raise ValueError("teacher and student must be different networks")

        def forward(z):
            with torch.no_grad():
                z = preprocess(z, training_mode=False)
                model.eval()  # after preprocess, which may set the mode of its own model
                return model(z)

        return forward

    def training_loss(self, x, y):
        import torch.nn.functional as F

        noisy = x + self.draw_noise(x, m=1)[0]
        teacher_logits = self.teacher_forward(noisy)
        student_logits = self._classifier.logits(noisy, training_mode=True)
        loss = self.transfer_weight * transfer_loss(student_logits, teacher_logits)
        if self.transfer_weight < 1.0:
            loss = loss + (1.0 - self.transfer_weight) * F.cross_entropy(student_logits, y)
        return loss

    def learning_rate_factor(self, iteration: int, total_iterations: int) -> float:
        """lr_gamma ** (number of milestones int(fraction * total) already reached by this 0-based iteration)."""
        passed = sum(iteration >= int(m * total_iterations) for m in self.milestones)
        return self.lr_gamma ** passed

    def fit(self, x, y=None, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> list[float]:
        """ART's ``fit`` (see the base class); the schedule spans ``total_epochs``, else this call's epochs."""
        if self.owns_lr_schedule and kwargs.get("scheduler") is not None:
            raise ValueError("CRT steps the learning rate itself (the official 50%/75% schedule): pass no scheduler, "
                             "or lr_schedule=False to use your own")
        if self.lr_schedule and self.total_epochs is None:
            self.total_epochs, self._inferred_total = self.epoch + int(nb_epochs), True
        elif self._inferred_total and self.epoch + nb_epochs > self.total_epochs:
            warnings.warn(f"CRT's learning-rate schedule spans the first fit call ({self.total_epochs} epochs in "
                          "all); later epochs run at the final rate. Pass total_epochs=... for a run split over "
                          "several fit calls", stacklevel=2)
        return super().fit(x, y, batch_size=batch_size, nb_epochs=nb_epochs, **kwargs)

    def before_step(self, loader) -> None:
        if not self.lr_schedule or self.total_epochs is None:
            return
        try:
            steps = self.steps_per_epoch(loader)
        except TypeError:  # an IterableDataset's loader has no len()
            raise ValueError("CRT's learning-rate schedule counts iterations, so the DataLoader needs a length; "
                             "pass lr_schedule=False for one without") from None
        factor = self.learning_rate_factor(self.iteration, self.total_epochs * steps)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base_lrs": list(self._base_lrs), "total_epochs": self.total_epochs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._base_lrs = [float(v) for v in state.get("base_lrs", self._base_lrs)]
        if self.total_epochs is None and state.get("total_epochs") is not None:
            self.total_epochs = int(state["total_epochs"])
