"""
The training loop shared by every smoothing trainer: batches from numpy arrays or a torch DataLoader, noise in
raw input space, the estimator's preprocessing and model, and one optimizer step per mini-batch. A trainer only
defines :meth:`SmoothingTrainer.training_loss` (and, for the SmoothAdv-style trainers that split each loader
batch into m mini-batches with their own steps, sets ``num_minibatches``).

The loop refuses what would silently turn the weights into NaN: non-finite inputs, labels that are not class
indices, and any step whose loss or gradient is not finite (:class:`~art_some.core.errors.NonFiniteError`; the
step is not taken, so the model keeps its last finite weights).
"""
from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING

import numpy as np
from art.defences.trainer import Trainer
from tqdm.auto import trange

from art_some.core.errors import NonFiniteError, name_indices
from art_some.core.noise import per_example, seed_for  # noqa: F401 (per_example re-exported)
from art_some.core.streams import TRAINING, TRAINING_SHUFFLE_KEY, training_noise_key

if TYPE_CHECKING:
    import torch

TRAINING_STAGE = TRAINING  # kept for callers of the old name


class SmoothingTrainer(Trainer, abc.ABC):
    """
    Base class of the noise-augmented trainers (ART's :class:`~art.defences.trainer.Trainer` API).

    :param classifier: A :class:`~art_some.SmoothedClassifier` (or subclass) with an optimizer.
    :param sigma: Training noise level (default: the classifier's ``scale``).
    :param seed: Seed of the training noise and the shuffling.
    :param optimizer: The optimizer to step (default: the classifier's; a trainer that tunes another module,
                      such as a denoiser, passes its own).

    The training noise is the classifier's (its ``noise`` family at ``sigma``), as Yang et al. train for each noise.
    A trainer whose loss holds for some families only lists them in ``noises`` (Gaussian by default: a method
    written for Gaussian noise refuses another in one line); ``None`` takes any.
    """

    noises: tuple[str, ...] | None = ("gaussian",)

    def __init__(self, classifier, sigma: float | None = None, seed: int = 0, optimizer=None):
        super().__init__(classifier)
        family = classifier.noise
        if self.noises is not None and family not in self.noises:
            raise ValueError(f"{type(self).__name__} is written for {'/'.join(self.noises)} noise, not the "
                             f"classifier's {family} noise")
        self.optimizer = optimizer if optimizer is not None else getattr(classifier, "optimizer", None)
        if self.optimizer is None:
            raise ValueError("the classifier needs an optimizer to be trained (pass optimizer=...)")
        self.sigma = float(classifier.scale if sigma is None else sigma)
        if not np.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.seed = int(seed)
        self._noise = None
        self._generator = None
        self._shuffle = None
        self.epoch = 0
        self.iteration = 0
        self.num_minibatches = 1

    @property
    def device(self) -> "torch.device":
        return self._classifier.device

    def noise_like(self, x: "torch.Tensor") -> "torch.Tensor":
        """
        The classifier's noise family's unit draws (zero mean, unit variance; standard normal for Gaussian) shaped
        like ``x``, from the trainer's seeded generator.
        """
        if self._noise is None:
            self._noise = self._classifier.make_noise(self.sigma)
        return self._noise.unit(x.shape, self.generator(x.device), x.device)

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
            self._generator.manual_seed(seed_for(self.seed, TRAINING, training_noise_key(_rank())))
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
        (per-step schedules), once the step's loss and gradient have been found finite: what a trainer commits
        here (a learning rate, DDRS's sigmas) is never the product of a refused step.
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
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
        if tuple(x.shape[1:]) != tuple(self._classifier.input_shape):
            raise ValueError(f"x must have shape (N, {self._classifier.input_shape}), got {x.shape}")
        # Checked once here (after the float32 cast, which is what the model sees), not again per batch.
        rows = nonfinite_rows(x)
        if rows:
            raise NonFiniteError(f"x has non-finite values (nan or inf) in rows {name_indices(rows)}; drop or "
                                 "repair them before training", rows)
        y = class_indices(y, self._classifier.nb_classes, "rows {} of y")
        if self._shuffle is None:  # one stream across fit calls, so repeated fit(nb_epochs=1) reshuffles
            self._shuffle = torch.Generator().manual_seed(seed_for(self.seed, TRAINING, TRAINING_SHUFFLE_KEY))
        shuffle = self._shuffle
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=shuffle, drop_last=drop_last)

    def fit(self, x, y=None, batch_size: int = 128, nb_epochs: int = 10, **kwargs) -> list[float]:
        """
        Train the classifier's model.

        Arrays are checked once up front, DataLoader batches as they come: a non-finite input raises
        :class:`~art_some.core.errors.NonFiniteError` naming the rows (and the batch), a label that is not an
        integral class index in ``[0, nb_classes)`` a ValueError. A step whose loss or gradient is not finite
        raises NonFiniteError (epoch and iteration in the message) without being taken, so the model keeps its last
        finite weights (BatchNorm running statistics included). The check runs after ``backward()`` and before
        ``step()``: under DDP the gradients are averaged across ranks during backward, so every rank sees the
        non-finite gradient and stops together instead of one rank stopping while the others wait in the
        all-reduce. It costs one host synchronisation per step (the one that reading the loss needs anyway).

        :param x: Training inputs ``(N, *input_shape)`` in raw input space, or a torch ``DataLoader`` of
                  ``(x, y)`` batches.
        :param y: Labels (indices or one-hot) when ``x`` is an array; None for a DataLoader.
        :param batch_size: Batch size for arrays.
        :param nb_epochs: Number of epochs.
        :param kwargs: ``scheduler`` (stepped once per epoch), ``verbose`` (a progress bar over epochs with the loss:
                       True, False, or None, the default, for "when standard error is a terminal"; it appears once
                       training has run for a second), ``drop_last``.
        :return: The mean training loss (over optimizer steps) of each epoch.
        """
        from torch.utils.data import DataLoader

        if int(nb_epochs) != nb_epochs or nb_epochs < 1:
            raise ValueError(f"nb_epochs must be an integer >= 1, got {nb_epochs!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        check_batches = isinstance(x, DataLoader)  # arrays were checked as a whole by _loader
        loader = self._loader(x, y, int(batch_size), kwargs.get("drop_last", False))
        scheduler = kwargs.get("scheduler")
        guard = BufferGuard(self.trained_modules())
        history = []
        sampler = getattr(loader, "sampler", None)
        try:
            verbose = kwargs.get("verbose")  # None: a bar when standard error is a terminal (tqdm's rule)
            epochs = trange(int(nb_epochs), desc=type(self).__name__, unit="epoch", delay=1.0,
                            disable=None if verbose is None else not verbose)
            for _ in epochs:
                self.epoch += 1
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(self.epoch)  # DistributedSampler: a new shuffle each epoch
                self.start_epoch()
                total, steps = 0.0, 0
                for number, (x_batch, y_batch, *rest) in enumerate(loader, 1):
                    x_batch = x_batch.to(self.device, dtype=self._float_dtype())
                    if check_batches:
                        y_batch = self._check_batch(x_batch, y_batch, number)
                    y_batch = y_batch.to(self.device).long()
                    if y_batch.dim() == 2:
                        y_batch = y_batch.argmax(dim=1)
                    rest = [t.to(self.device) for t in rest]
                    for x_mini, y_mini, *rest_mini in self.minibatches(x_batch, y_batch, *rest):
                        total += self._step(loader, guard, steps + 1, x_mini, y_mini, *rest_mini)
                        steps += 1
                if scheduler is not None:
                    scheduler.step()
                history.append(total / max(1, steps))
                epochs.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
        finally:
            self._classifier.model.eval()
        return history

    def trained_modules(self) -> list:
        """The modules whose buffers a refused step restores (the classifier's model; a denoiser if there is one)."""
        import torch

        modules = [self._classifier.model, getattr(self._classifier, "denoiser", None)]
        return [m for m in modules if isinstance(m, torch.nn.Module)]

    def _check_batch(self, x_batch, y_batch, number: int):
        """
        Refuse a loader batch with non-finite inputs or bad labels; return the labels as class indices. Under
        torch.distributed the ranks agree first (one small all-reduce per batch), so that they all stop rather
        than one rank stopping while the others wait for it in the gradient all-reduce.
        """
        import torch

        where = f"batch {number} of epoch {self.epoch}"
        error, labels = None, None
        try:
            if not bool(torch.isfinite(x_batch).all()):
                rows = nonfinite_rows(x_batch)
                raise NonFiniteError(f"non-finite training inputs (nan or inf) in rows {name_indices(rows)} of "
                                     f"{where}; drop or repair them before training", rows)
            y = y_batch.detach().cpu().numpy() if isinstance(y_batch, torch.Tensor) else np.asarray(y_batch)
            labels = torch.from_numpy(class_indices(y, self._classifier.nb_classes, "rows {} of " + where))
        except ValueError as err:
            error = err
        if _world_size() > 1:
            import torch.distributed as dist

            flag = torch.tensor([error is not None], dtype=torch.int32, device=x_batch.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if error is None and bool(flag.item()):
                error = ValueError(f"another rank refused its part of {where} (see that rank's error)")
        if error is not None:
            raise error
        return labels

    def _step(self, loader, guard: "BufferGuard", iteration: int, x, y, *rest) -> float:
        """One optimizer step on a mini-batch, refused (weights and buffers unchanged) if not finite."""
        optimizer = self.optimizer
        optimizer.zero_grad()
        saved = guard.save()
        loss = self.training_loss(x, y, *rest)
        loss.backward()
        loss_value, grad_value = finite_check_values(loss, optimizer)
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            largest = largest_gradient(optimizer) if math.isfinite(loss_value) else math.nan
            optimizer.zero_grad()
            guard.restore(saved)
            where = f"at epoch {self.epoch}, iteration {iteration}"
            if not math.isfinite(loss_value):
                what = f"non-finite training loss ({loss_value})"
            elif not math.isfinite(largest):
                what = f"non-finite gradient ({largest}) with a finite loss ({loss_value:.4g})"
            else:  # finite entries whose norm overflows: the step would throw the weights out of range anyway
                what = f"gradient too large for a finite norm (largest entry {largest:.3g}) with loss {loss_value:.4g}"
            raise NonFiniteError(f"{what} {where}; lower the learning rate or check the data")
        self.before_step(loader)
        optimizer.step()
        self.iteration += 1
        return loss_value

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


def nonfinite_rows(x) -> list[int]:
    """Rows (first axis) of a numpy array or torch tensor that hold a NaN or an infinity."""
    import torch

    if isinstance(x, torch.Tensor):
        return (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero().flatten().tolist()
    if np.isfinite(x).all():  # one pass in the common case
        return []
    return np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)).tolist()


def class_indices(y: np.ndarray, nb_classes: int, where: str = "rows {} of y") -> np.ndarray:
    """
    Labels as int64 class indices: one-hot or score rows ``(N, C)`` by argmax, indices ``(N,)`` as they are.
    Refuses non-finite values (:class:`~art_some.core.errors.NonFiniteError`), non-integral float indices and
    indices outside ``[0, nb_classes)`` (ValueError), naming the rows (``where`` formats them).
    """
    y = np.asarray(y)
    if y.ndim == 2:
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            rows = nonfinite_rows(y)
            raise NonFiniteError(f"labels have non-finite values (nan or inf) in {where.format(name_indices(rows))}",
                                 rows)
        y = y.argmax(axis=1)
    elif y.ndim != 1:
        raise ValueError(f"labels must be class indices (N,) or one-hot rows (N, {nb_classes}), got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be integer class indices in [0, {nb_classes}), got dtype {y.dtype}")
    if y.dtype.kind == "f":
        rows = np.flatnonzero(~np.isfinite(y)).tolist()
        if rows:
            raise NonFiniteError(f"labels are non-finite (nan or inf) in {where.format(name_indices(rows))}", rows)
        rows = np.flatnonzero(y != np.round(y)).tolist()
        if rows:
            raise ValueError(f"labels must be integral class indices in [0, {nb_classes}), got {y[rows[0]].item()!r} "
                             f"in {where.format(name_indices(rows))}")
    rows = np.flatnonzero((y < 0) | (y >= nb_classes)).tolist()
    if rows:
        raise ValueError(f"labels must be class indices in [0, {nb_classes}), got {y[rows[0]].item()!r} "
                         f"in {where.format(name_indices(rows))}")
    return y.astype(np.int64)


def finite_check_values(loss: "torch.Tensor", optimizer) -> tuple[float, float]:
    """
    ``(loss, largest per-tensor gradient 2-norm)`` over the optimizer's parameters as two floats, read in one host
    synchronisation. The 2-norm is the cheapest fused reduction (``clip_grad_norm_``'s); it is non-finite when an
    entry is, and also when finite entries above about 1e19 overflow its float32 sum of squares (see
    :func:`largest_gradient`).
    """
    import torch

    loss = loss.detach().float().reshape(())
    grads = _gradients(optimizer)
    if not grads:
        return float(loss), 0.0
    try:
        norms = torch._foreach_norm(grads, 2)  # one fused kernel per device and dtype
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        norms = [torch.linalg.vector_norm(g) for g in grads]
    norms = [n.to(loss.device, torch.float32) for n in norms]
    loss_value, grad_value = torch.stack([loss, torch.stack(norms).max()]).tolist()
    return loss_value, grad_value


def largest_gradient(optimizer) -> float:
    """The largest absolute gradient entry (exact, slower than the norm: only for the message of a refused step)."""
    import torch

    values = [float(torch.linalg.vector_norm(g.float(), math.inf)) for g in _gradients(optimizer)]
    # Python's max() skips NaN depending on the order, so report any non-finite entry first.
    return next((v for v in values if not math.isfinite(v)), max(values, default=0.0))


def _gradients(optimizer) -> list:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return [g.coalesce().values() if g.is_sparse else g for g in grads]


class BufferGuard:
    """
    The buffers of some modules (BatchNorm running statistics and batch counts), saved before a step's forward
    passes and restored if the step is refused: train-mode forward passes update them even when the loss turns
    out non-finite. One concatenation per device and dtype per step; nothing for modules without buffers.
    """

    def __init__(self, modules):
        seen, groups = set(), {}
        for module in modules:
            for buffer in module.buffers():
                if id(buffer) not in seen:
                    seen.add(id(buffer))
                    groups.setdefault((buffer.device, buffer.dtype), []).append(buffer)
        self.groups = list(groups.values())

    def save(self) -> list:
        import torch

        with torch.no_grad():
            return [torch.cat([b.reshape(-1) for b in group]) for group in self.groups]

    def restore(self, saved: list) -> None:
        import torch

        with torch.no_grad():
            for group, flat in zip(self.groups, saved):
                offset = 0
                for buffer in group:
                    buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
                    offset += buffer.numel()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
