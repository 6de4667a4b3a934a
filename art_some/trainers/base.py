"""
The training loop shared by every smoothing trainer: batches from numpy arrays or a torch DataLoader, noise in
raw input space, the estimator's preprocessing and model, and one optimizer step per mini-batch. A trainer only
defines :meth:`SmoothingTrainer.training_loss` (and, for the SmoothAdv-style trainers that split each loader
batch into m mini-batches with their own steps, sets ``num_minibatches``).
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np
from art.defences.trainer import Trainer
from tqdm.auto import trange

from art_some.core.noise import seed_for

if TYPE_CHECKING:
    import torch

TRAINING_STAGE = 4


class SmoothingTrainer(Trainer, abc.ABC):
    """
    Base class of the noise-augmented trainers (ART's :class:`~art.defences.trainer.Trainer` API).

    :param classifier: A :class:`~art_some.SmoothedClassifier` (or subclass) with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param seed: Seed of the training noise and the shuffling.
    :param optimizer: The optimizer to step (default: the classifier's; a trainer that tunes another module,
                      such as a denoiser, passes its own).
    """

    def __init__(self, classifier, sigma: float | None = None, seed: int = 0, optimizer=None):
        super().__init__(classifier)
        self.optimizer = optimizer if optimizer is not None else getattr(classifier, "optimizer", None)
        if self.optimizer is None:
            raise ValueError("the classifier needs an optimizer to be trained (pass optimizer=...)")
        self.sigma = float(classifier.scale if sigma is None else sigma)
        if not np.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.seed = int(seed)
        self._generator = None
        self._shuffle = None
        self.epoch = 0
        self.iteration = 0
        self.num_minibatches = 1

    @property
    def device(self) -> "torch.device":
        return self._classifier.device

    def noise_like(self, x: "torch.Tensor") -> "torch.Tensor":
        """Standard-normal noise shaped like ``x`` from the trainer's seeded generator."""
        import torch

        return torch.randn(x.shape, generator=self.generator(x.device), device=x.device)

    def draw_noise(self, x: "torch.Tensor", m: int | None = None, sigma=None) -> "torch.Tensor":
        """
        m scaled noise draws ``(m, B, ...)`` for the batch ``x`` (default m: the trainer's ``num_noise_vec``, else
        1); draw j of the whole batch is chunk j, so it lines up with the labels.

        :param sigma: The noise level: None for the trainer's ``sigma``, a number, or one value per example
                      (a ``(B,)`` tensor, as data-dependent smoothing trains).
        """
        m = getattr(self, "num_noise_vec", 1) if m is None else m
        eps = self.noise_like(x.unsqueeze(0).expand(m, *x.shape))
        return per_example(self.sigma if sigma is None else sigma, eps, dim=1) * eps

    def generator(self, device) -> "torch.Generator":
        """The trainer's seeded generator (noise, mixup coefficients); one stream per distributed rank."""
        import torch

        if self._generator is None:
            self._generator = torch.Generator(device=device)
            # Stream 1 is the shuffling; rank r > 0 draws stream 2r so that ranks never share noise.
            self._generator.manual_seed(seed_for(self.seed, TRAINING_STAGE, 2 * _rank()))
        return self._generator

    def minibatches(self, *tensors: "torch.Tensor"):
        """
        Split a loader batch (inputs, labels and any per-example tensors) into ``num_minibatches`` equal chunks,
        one optimizer step each; the remainder is dropped, as in the SmoothAdv/Consistency/SmoothMix/SOME code
        (``_chunk_minibatch``).
        """
        size = len(tensors[0]) // self.num_minibatches
        for i in range(self.num_minibatches if size > 0 else 0):
            yield tuple(t[i * size:(i + 1) * size] for t in tensors)

    def steps_per_epoch(self, loader) -> int:
        """Optimizer steps in one epoch over ``loader`` (what per-iteration schedules count; needs ``len(loader)``)."""
        return len(loader) * self.num_minibatches

    @abc.abstractmethod
    def training_loss(self, x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """
        The scalar loss on a clean batch ``x`` (raw input space, on the device) with class indices ``y`` (a
        trainer whose loader yields more per-example tensors, such as example indices, receives them after ``y``).
        """

    def before_step(self, loader) -> None:
        """
        Called before each optimizer step of an epoch over ``loader``, with ``self.iteration`` the 0-based step count
        (per-step schedules).
        """

    def _loader(self, x, y, batch_size: int, drop_last: bool):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        if isinstance(x, DataLoader):
            if y is not None:
                raise ValueError("y must be None when x is a DataLoader (it yields the labels)")
            return x
        if y is None:
            raise ValueError("y is required when x is an array")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if y.ndim == 2:
            y = y.argmax(axis=1)
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
        if tuple(x.shape[1:]) != tuple(self._classifier.input_shape):
            raise ValueError(f"x must have shape (N, {self._classifier.input_shape}), got {x.shape}")
        if self._shuffle is None:  # one stream across fit calls, so repeated fit(nb_epochs=1) reshuffles
            self._shuffle = torch.Generator().manual_seed(seed_for(self.seed, TRAINING_STAGE, 1))
        shuffle = self._shuffle
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=shuffle, drop_last=drop_last)

    def fit(self, x, y=None, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> list[float]:
        """
        Train the classifier's model.

        :param x: Training inputs ``(N, *input_shape)`` in raw input space, or a torch ``DataLoader`` of
                  ``(x, y)`` batches.
        :param y: Labels (indices or one-hot) when ``x`` is an array; None for a DataLoader.
        :param batch_size: Batch size for arrays.
        :param nb_epochs: Number of epochs.
        :param kwargs: ``scheduler`` (stepped once per epoch), ``verbose`` (progress bar), ``drop_last``.
        :return: The mean training loss (over optimizer steps) of each epoch.
        """
        if int(nb_epochs) != nb_epochs or nb_epochs < 1:
            raise ValueError(f"nb_epochs must be an integer >= 1, got {nb_epochs!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        loader = self._loader(x, y, int(batch_size), kwargs.get("drop_last", False))
        scheduler = kwargs.get("scheduler")
        optimizer = self.optimizer
        history = []
        sampler = getattr(loader, "sampler", None)
        for _ in trange(int(nb_epochs), desc=type(self).__name__, disable=not kwargs.get("verbose", False)):
            self.epoch += 1
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(self.epoch)  # DistributedSampler: a new shuffle each epoch
            self.start_epoch()
            total, steps = 0.0, 0
            for x_batch, y_batch, *rest in loader:
                x_batch = x_batch.to(self.device, dtype=self._float_dtype())
                y_batch = y_batch.to(self.device).long()
                if y_batch.dim() == 2:
                    y_batch = y_batch.argmax(dim=1)
                rest = [t.to(self.device) for t in rest]
                for x_mini, y_mini, *rest_mini in self.minibatches(x_batch, y_batch, *rest):
                    optimizer.zero_grad()
                    loss = self.training_loss(x_mini, y_mini, *rest_mini)
                    loss.backward()
                    self.before_step(loader)
                    optimizer.step()
                    self.iteration += 1
                    total += float(loss.detach())
                    steps += 1
            if scheduler is not None:
                scheduler.step()
            history.append(total / max(1, steps))
        self._classifier.model.eval()
        return history

    def state_dict(self) -> dict:
        """What resuming needs besides the model and optimizer: the epoch and the noise generator's state."""
        return {"epoch": self.epoch, "iteration": self.iteration,
                "generator": None if self._generator is None else self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output, so that a resumed run draws the same noise as an unbroken one."""
        self.epoch = int(state["epoch"])
        self.iteration = int(state.get("iteration", 0))
        if state.get("generator") is not None:
            self.generator(self.device).set_state(state["generator"])

    def start_epoch(self) -> None:
        """Called at the start of each epoch, after ``self.epoch`` (1-based) has been advanced."""

    @staticmethod
    def _float_dtype():
        import torch

        return torch.float32


def per_example(value, like: "torch.Tensor", dim: int = 0):
    """
    ``value`` ready to multiply ``like``: a number as it is, a ``(B,)`` tensor of per-example values reshaped to
    broadcast along axis ``dim`` of ``like`` (the example axis).
    """
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.to(like.device, like.dtype).view(*([1] * dim), -1, *([1] * (like.dim() - dim - 1)))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
