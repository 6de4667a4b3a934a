"""
Gradients of the smoothed soft classifier by Monte-Carlo averaging (EOT), as a mixin for every smoothed estimator
(ART's layout: one capability, one mixin), so that ART's white-box attacks attack the smoothed classifier and not
the noise-free base network.

The soft smoothed classifier is G(x) = E[soft_scores(x + delta)] (Salman et al. 2019), averaged over the levels
that an estimator's :meth:`smoothing` lists in ``gradient_levels`` (one for plain smoothing), with the noise of
each level. Gradient noise comes from one generator seeded from ``(seed, GRADIENT, stream)``: a sequence of calls is
reproducible and EOT averages over new draws at every attack step.

| Paper link: https://arxiv.org/abs/1906.04584
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from art.config import ART_NUMPY_DTYPE

from art_some.core.noise import expected_scores, seed_for
from art_some.core.streams import GRADIENT

if TYPE_CHECKING:
    import torch


class SmoothedGradientsMixin:
    """
    ``loss_gradient``, ``compute_loss`` and ``class_gradient`` of the soft smoothed classifier, estimated from
    ``gradient_samples`` noise draws per input (default ``sample_size``). Needs the estimator's ``smoothing``,
    ``to_noise_space``, ``sample_size``, ``gradient_samples``, ``noise_batch_size``, ``seed``, ``nb_classes``,
    ``input_shape`` and ``_device``.
    """

    _gradient_stream = 0
    _gradient_generator = None

    def reseed_gradients(self, stream: int = 0) -> None:
        """
        Restart the EOT gradient noise at stream ``stream`` (0 is where a new estimator starts): an attack run that
        begins with the same stream sees the same gradient noise, whatever ran before it.
        """
        self._gradient_stream = int(stream)
        self._gradient_generator = None

    def _gradient_noise(self, shape, device, noise) -> "torch.Tensor":
        import torch

        key = (self.seed, str(torch.device(device)))
        if self._gradient_generator is None or self._gradient_generator[0] != key:
            # (Re)seeded whenever the seed or device changes, e.g. through set_params(seed=...).
            generator = torch.Generator(device=device)
            generator.manual_seed(seed_for(self.seed, GRADIENT, self._gradient_stream))
            self._gradient_generator = (key, generator)
        return noise.unit(shape, self._gradient_generator[1], device)  # the estimator's noise family

    def expected_scores(self, x: "torch.Tensor", noise, scores_fn) -> "torch.Tensor":
        """
        E[scores_fn(x + delta)] with delta from ``noise``, from ``gradient_samples`` fresh draws per input of the
        GRADIENT stream (in noise space; :func:`art_some.core.noise.expected_scores`); differentiable in ``x``.
        """
        num = self.gradient_samples or self.sample_size
        return expected_scores(scores_fn, self.to_noise_space(x), noise, num=num, batch_size=self.noise_batch_size,
                               draw=lambda shape: self._gradient_noise(shape, x.device, noise))

    def smoothed_log_proba(self, x: "torch.Tensor", training_mode: bool = False) -> "torch.Tensor":
        """
        log G(x), with G(x) = E[soft_scores(x + delta)] (softmax of f for plain smoothing) estimated from
        ``gradient_samples`` draws per input; differentiable with respect to ``x`` (a tensor on the estimator's
        device).
        """
        import torch

        used = self.smoothing(x.detach()).gradient_levels
        if len(used) == 1:
            probs = self.expected_scores(x, used[0].noise, lambda z: used[0].soft(z, training_mode=training_mode))
        else:  # a cascade: the mean over its (gradient) levels of their soft smoothed classifiers
            probs = sum(
                self.expected_scores(x, level.noise, lambda z, level=level: level.soft(z, training_mode=training_mode))
                for level in used
            ) / len(used)
        return torch.log(probs.clamp_min(1e-20))

    def _to_torch(self, x) -> tuple["torch.Tensor", bool]:
        import torch

        is_tensor = isinstance(x, torch.Tensor)
        x_t = x.detach() if is_tensor else torch.from_numpy(np.asarray(x, dtype=ART_NUMPY_DTYPE))
        if tuple(x_t.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x_t.shape)}")
        return x_t.to(self._device, dtype=torch.float32).clone().requires_grad_(True), is_tensor

    def _labels(self, y, n: int) -> "torch.Tensor":
        import torch

        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:  # a column of class indices, as ART accepts
            y = y[:, 0]
        elif y.ndim == 2:
            if y.shape[1] != self.nb_classes:
                raise ValueError(f"one-hot y must have {self.nb_classes} columns, got {y.shape[1]}")
            y = y.argmax(axis=1)
        if y.shape != (n,):
            raise ValueError(f"y must be {n} class indices or one-hot rows, got shape {y.shape}")
        return torch.as_tensor(check_labels(y, self.nb_classes), device=self._device)

    def compute_loss(self, x, y, reduction: str = "none", **kwargs):
        """
        The smoothed cross-entropy -log G_y(x) (EOT estimate).

        :param x: Inputs (numpy or torch).
        :param y: Labels, indices or one-hot.
        :param reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        :return: Loss values, numpy or torch matching ``x``.
        """
        import torch

        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        x_t, is_tensor = self._to_torch(x)
        with torch.no_grad():
            log_proba = self.smoothed_log_proba(x_t)
            loss = torch.nn.functional.nll_loss(log_proba, self._labels(y, len(x_t)), reduction=reduction)
        return loss if is_tensor else loss.cpu().numpy()

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):  # type: ignore[override]
        """
        Gradient with respect to ``x`` of the smoothed cross-entropy -log G_y(x) (EOT over
        ``gradient_samples`` draws; summed over inputs, so each row is that input's own gradient).

        :param x: Inputs (numpy or torch).
        :param y: Labels, indices or one-hot.
        :param training_mode: Model in training mode while differentiating.
        :return: Gradients of the same shape and type as ``x``.
        """
        import torch

        x_t, is_tensor = self._to_torch(x)
        loss = torch.nn.functional.nll_loss(
            self.smoothed_log_proba(x_t, training_mode=training_mode), self._labels(y, len(x_t)), reduction="sum"
        )
        (grad,) = torch.autograd.grad(loss, x_t)
        return grad if is_tensor else grad.cpu().numpy()

    def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs):  # type: ignore[override]
        """
        Gradient of ``sample_size * G_c(x)`` (the soft relaxation of the vote counts ``predict`` returns) with
        respect to ``x``, by EOT.

        :param x: Inputs (numpy or torch).
        :param label: None for all classes, an int for one class, or one class per input.
        :param training_mode: Model in training mode while differentiating.
        :return: ``(N, nb_classes, *input_shape)`` for ``label=None``, else ``(N, 1, *input_shape)``.
        """
        import torch

        x_t, is_tensor = self._to_torch(x)
        n = len(x_t)
        if label is None:
            classes = None
        elif isinstance(label, (int, np.integer)):
            if not 0 <= int(label) < self.nb_classes:
                raise ValueError(f"label must lie in 0..{self.nb_classes - 1}, got {label}")
            classes = torch.full((n,), int(label), device=self._device)
        else:
            label_arr = np.asarray(label).reshape(-1)
            if label_arr.shape != (n,) or label_arr.min() < 0 or label_arr.max() >= self.nb_classes:
                raise ValueError(f"label must hold one class in 0..{self.nb_classes - 1} per input")
            classes = torch.as_tensor(label_arr.astype(np.int64), device=self._device)
        scores = self.sample_size * self.smoothed_log_proba(x_t, training_mode=training_mode).exp()
        if classes is not None:
            (grad,) = torch.autograd.grad(scores.gather(1, classes[:, None]).sum(), x_t)
            grads = grad[:, None]
        else:
            grads = torch.stack(
                [torch.autograd.grad(scores[:, c].sum(), x_t, retain_graph=True)[0] for c in range(self.nb_classes)],
                dim=1,
            )
        return grads if is_tensor else grads.cpu().numpy()



def check_labels(y, nb_classes: int) -> np.ndarray:
    """Class indices as int64, or a clear error for labels outside 0..nb_classes-1 or non-integral floats."""
    y = np.asarray(y)
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f" and (not np.all(np.isfinite(y)) or np.any(np.mod(y, 1) != 0)):
        raise ValueError("labels must be integer class indices; got non-integral or non-finite floats")
    if len(y) and (y.min() < 0 or y.max() >= nb_classes):
        raise ValueError(f"labels must lie in 0..{nb_classes - 1}, got values in {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)

