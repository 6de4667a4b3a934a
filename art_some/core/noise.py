"""
Streaming Monte-Carlo vote counting on the device: the hot loop of every smoothing method.

Noise is drawn per batch from explicit generators seeded from ``(seed, stage, input index)``, the vote function
runs under :func:`torch.inference_mode`, and votes are accumulated with :func:`torch.bincount`; only the
``(inputs, classes)`` count matrix leaves the device. Memory is O(batch_size), never O(n).

Reproducibility contract: input ``i`` always sees the same noise sequence for a given ``(seed, stage, indices[i],
num)``, whatever the batch size, the other inputs in the call, or how inputs are sharded across processes. Each
input's standard-normal draws come from its own :class:`torch.Generator` in fixed-size blocks (the block size
depends only on ``num`` and the input size), so cutting the stream into batches differently cannot change it.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from scipy.stats import norm
from tqdm.auto import tqdm

from art_some.core.errors import NonFiniteError, name_indices

# Stages keep the selection (n0) and estimation (n) draws of CERTIFY independent of each other and of PREDICT;
# every stage and key of the package is listed in art_some.core.streams.
from art_some.core.streams import ESTIMATION, PREDICTION, SELECTION  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch

# A block holds at most this many floats (16 MB in float32); it bounds the memory one stream caches.
NOISE_BLOCK_ELEMENTS = 2**22

# The vote of a noisy input on which the base classifier's output was NaN or infinite: it is never counted.
INVALID = -1

VoteFunction = Callable[["torch.Tensor"], "torch.Tensor"]


def argmax_votes(scores: "torch.Tensor") -> "torch.Tensor":
    """
    The class index of each row of ``scores`` ``(B, C)``, or :data:`INVALID` where a row is not finite (the argmax
    of NaN is 0, which would count as a confident vote for class 0). Every vote function should end with this.
    """
    import torch

    votes = scores.argmax(dim=1)
    bad = ~torch.isfinite(scores.flatten(1)).all(dim=1)
    return torch.where(bad, torch.full_like(votes, INVALID), votes)


def seed_for(seed: int, stage: int, index: int) -> int:
    """
    A 63-bit generator seed derived from ``(seed, stage, index)`` with :class:`numpy.random.SeedSequence`, so
    nearby seeds and indices give statistically independent streams.
    """
    words = np.random.SeedSequence([int(seed), int(stage), int(index)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


def per_example(value, like: "torch.Tensor", dim: int = 0):
    """
    ``value`` ready to multiply ``like``: a number as it is, a ``(B,)`` tensor of per-example values (a sigma per
    input) reshaped to broadcast along axis ``dim`` of ``like`` (the example axis). Written once for the noise
    models, the trainers and the sigma search.
    """
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.to(like.device, like.dtype).view(*([1] * dim), -1, *([1] * (like.dim() - dim - 1)))


def soft_smoothed(logits: "torch.Tensor", dim: int = 0) -> "torch.Tensor":
    """
    The soft smoothed classifier's estimate from the logits of noisy copies: the mean over axis ``dim`` (the draws)
    of softmax over the last axis (the classes), E[softmax f(x + delta)] (Salman et al.; MACER; DDRS's sigma search).
    """
    import torch

    return torch.softmax(logits, dim=-1).mean(dim=dim)


NORMS = ("l1", "l2", "linf")
NORM_LABELS = {"l1": "L1", "l2": "L2", "linf": "L-inf"}  # how tables and plots name them


class NoiseModel(abc.ABC):
    """
    A noise family: its distribution and its geometry. Draws are ``x + sigma * eps`` with ``eps`` of zero mean and
    unit variance per coordinate (:meth:`unit`, from the engine's keyed generators), so ``sigma`` is the noise's
    standard deviation in every family and families compare at equal sigma (as Yang et al. do). :meth:`radius` maps
    a lower bound on pA to the radius it certifies in the norm :attr:`norm` (one of the family's :attr:`norms`).

    ``sigma`` may be a scalar or one value per input (data-dependent smoothing; :meth:`subset` picks inputs);
    ``perturb`` picks each row's sigma through ``owner``, the position of the input the row belongs to.

    :param sigma: The standard deviation per coordinate (> 0), a number or one per input.
    :param norm: The norm of the radii, one of :attr:`norms` (default the first).
    :param dimension: The number of coordinates the noise is added to (needed by radii that depend on it, e.g.
                      Gaussian noise in L-infinity).
    """

    name = ""
    norms: tuple[str, ...] = ()

    def __init__(self, sigma, norm: str | None = None, dimension: int | None = None):
        sigma_arr = np.asarray(sigma, dtype=np.float64)
        if not np.all(np.isfinite(sigma_arr)) or np.any(sigma_arr <= 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma_arr) if sigma_arr.ndim == 0 else sigma_arr
        self.norm = self.norms[0] if norm is None else norm
        if self.norm not in self.norms:
            raise ValueError(f"{self.name} noise certifies radii in {', '.join(self.norms)}, not norm={norm!r}")
        if dimension is not None and (isinstance(dimension, bool) or int(dimension) != dimension or dimension < 1):
            raise ValueError(f"dimension must be an integer >= 1, got {dimension!r}")
        self.dimension = None if dimension is None else int(dimension)

    @abc.abstractmethod
    def unit(self, shape, generator: "torch.Generator", device) -> "torch.Tensor":
        """Draws of zero mean and unit variance per coordinate, shape ``shape``, from ``generator``."""

    def perturb(self, x_rows: "torch.Tensor", eps: "torch.Tensor", owner: "torch.Tensor") -> "torch.Tensor":
        """Noisy rows ``x_rows + sigma * eps``; ``owner[j]`` is the input position of row ``j``."""
        import torch

        if isinstance(self.sigma, float):
            return x_rows + self.sigma * eps
        sigma = torch.as_tensor(self.sigma, dtype=eps.dtype, device=eps.device)[owner]
        return x_rows + per_example(sigma, eps) * eps

    def radius(self, p_lower) -> np.ndarray:
        """The radius in :attr:`norm` certified by lower bounds ``p_lower`` on pA; 0.0 where p_lower <= 1/2."""
        p_lower = np.asarray(p_lower, dtype=np.float64)
        sure = p_lower > 0.5
        radius = self._radius(np.where(sure, p_lower, 0.75))  # any p in (1/2, 1] keeps the formula finite there
        return np.where(sure, radius, 0.0)

    @abc.abstractmethod
    def _radius(self, p: np.ndarray) -> np.ndarray:
        """The radius for ``p`` in (1/2, 1] (the family's formula)."""

    def threshold(self, radius) -> np.ndarray:
        """
        The smallest pA whose :meth:`radius` reaches ``radius`` (>= 0; 1/2 for 0), per input: the formula's inverse,
        nudged up by rounding so that ``radius(threshold(r)) >= r`` holds exactly; 1.0 where no pA below 1 reaches it.
        """
        radius = np.asarray(radius, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            p = np.clip(np.nan_to_num(self._threshold(radius), nan=1.0), 0.5, 1.0)
        for _ in range(8):
            short = (p < 1.0) & (self.radius(p) < radius)
            p = np.where(short, np.nextafter(p, 2.0), p)
        return np.where(self.radius(np.minimum(p, np.nextafter(1.0, 0.0))) >= radius, np.minimum(p, 1.0), 1.0)

    @abc.abstractmethod
    def _threshold(self, radius: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`_radius` (the family's formula solved for p)."""

    def subset(self, positions) -> "NoiseModel":
        """The noise of the inputs at ``positions`` (their own sigmas when there is one per input)."""
        if isinstance(self.sigma, float):
            return self
        return type(self)(self.sigma[np.asarray(positions)], norm=self.norm, dimension=self.dimension)

    def describe(self) -> dict:
        """What each record says of the noise: its family and the norm of its radii."""
        return {"noise": self.name, "norm": self.norm}

    def _need_dimension(self) -> int:
        if self.dimension is None:
            raise ValueError(f"{self.name} noise in {self.norm} needs the input dimension (dimension=...)")
        return self.dimension

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma!r}, norm={self.norm!r})"


class GaussianNoise(NoiseModel):
    """
    Isotropic Gaussian noise N(0, sigma^2 I) added in raw input space (before any preprocessing).

    Radii (Cohen et al., Theorem 1): L2, sigma * Phi^-1(pA); L1, the same (an L1 ball of radius r lies in the L2 ball
    of radius r; Yang et al., Table 1); L-infinity, the L2 radius divided by sqrt(d) (the dimension factor the
    literature reports: the L-infinity ball of radius r lies in the L2 ball of radius r sqrt(d)).

    | Paper link: https://arxiv.org/abs/1902.02918
    """

    name = "gaussian"
    norms = ("l2", "l1", "linf")

    def unit(self, shape, generator, device):
        import torch

        return torch.randn(shape, generator=generator, device=device)

    def _radius(self, p):
        radius = np.asarray(self.sigma, dtype=np.float64) * norm.ppf(p)  # Cohen et al.'s sigma Phi^-1(p)
        if self.norm == "linf":
            return radius / np.sqrt(self._need_dimension())
        return radius

    def _threshold(self, radius):
        scale = np.sqrt(self._need_dimension()) if self.norm == "linf" else 1.0
        return norm.cdf(radius * scale / np.asarray(self.sigma, dtype=np.float64))

    def margin(self, p_high, p_low) -> np.ndarray:
        """
        sigma * (Phi^-1(p_high) - Phi^-1(p_low)): how far (L2) the input can move before a class probability at
        least ``p_high`` can fall to ``p_low`` (or one at most ``p_low`` rise to ``p_high``), because x -> Phi^-1(p(x))
        is (1 / sigma)-Lipschitz (Salman et al., Lemma 2). Cohen's radius is ``margin(p_lower, 1/2)``.
        """
        if self.norm != "l2":
            raise ValueError(f"the margin of Gaussian noise is an L2 distance; this noise certifies {self.norm}")
        return self.sigma * (norm.ppf(p_high) - norm.ppf(p_low))


class LaplaceNoise(NoiseModel):
    """
    Laplace noise of scale b = sigma / sqrt(2) per coordinate (variance sigma^2), density
    ``exp(-||x||_1 / b) / (2 b)^d``.

    Radius (Teng et al., ICLR 2020, Theorem 1 with the bound pB <= 1 - pA): L1, R = -b ln(2 (1 - pA)) for pA > 1/2.
    On a linear classifier along one coordinate at distance t, pA = 1 - exp(-t / b) / 2, and R = t: tight.

    | Paper link: https://openreview.net/forum?id=H1lQIgrFDS
    """

    name = "laplace"
    norms = ("l1",)

    def unit(self, shape, generator, device):
        import torch

        # The difference of two standard exponentials is Laplace(1): variance 2, so divide by sqrt(2).
        first = torch.empty(shape, device=device).exponential_(generator=generator)
        second = torch.empty(shape, device=device).exponential_(generator=generator)
        return (first - second) / np.sqrt(2.0)

    def _radius(self, p):
        scale = np.asarray(self.sigma, dtype=np.float64) / np.sqrt(2.0)
        with np.errstate(divide="ignore"):  # p = 1 (no bound the engine gives): an infinite radius
            return -scale * (np.log(2.0) + np.log1p(-p))

    def _threshold(self, radius):
        return 1.0 - np.exp(-radius * np.sqrt(2.0) / np.asarray(self.sigma, dtype=np.float64)) / 2.0


class UniformNoise(NoiseModel):
    """
    Uniform noise on the cube [-lambda, lambda]^d with lambda = sigma sqrt(3) (variance sigma^2).

    Radius (Yang et al., ICML 2020, the uniform row of Table 1 for L1): R = 2 lambda (pA - 1/2). Shifting the cube by
    delta leaves all but a mass of at most ||delta||_1 / (2 lambda) where it was, so pA can fall by at most that.
    Tight on a linear classifier along one coordinate (pA = (t + lambda) / (2 lambda), R = t); Yang et al.'s best L1
    family.

    | Paper link: https://arxiv.org/abs/2002.08118
    """

    name = "uniform"
    norms = ("l1",)

    def unit(self, shape, generator, device):
        import torch

        return (2.0 * torch.rand(shape, generator=generator, device=device) - 1.0) * np.sqrt(3.0)

    def _radius(self, p):
        half_width = np.asarray(self.sigma, dtype=np.float64) * np.sqrt(3.0)
        return 2.0 * half_width * (p - 0.5)

    def _threshold(self, radius):
        return 0.5 + radius / (2.0 * np.asarray(self.sigma, dtype=np.float64) * np.sqrt(3.0))


def lp_norm(delta, norm: str) -> float:
    """The ``norm`` (``"l1"``, ``"l2"`` or ``"linf"``) of the array ``delta``, flattened (in its own dtype)."""
    flat = np.asarray(delta).ravel()
    if norm == "l1":
        return float(np.abs(flat).sum())
    if norm == "l2":
        return float(np.linalg.norm(flat))
    if norm == "linf":
        return float(np.abs(flat).max(initial=0.0))
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class NoiseStream:
    """A noise model's unit draws for one input, served in any chunk sizes from fixed-size generator blocks."""

    def __init__(self, shape: Sequence[int], seed: int, block: int, device: "torch.device", noise: NoiseModel):
        import torch

        self._noise = noise
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._shape = tuple(shape)
        self._block = block
        self._device = device
        self._cache = None

    def take(self, k: int) -> "torch.Tensor":
        """The next ``k`` draws, shape ``(k, *shape)``."""
        import torch

        parts, have = [], 0
        while have < k:
            if self._cache is None or len(self._cache) == 0:
                self._cache = self._noise.unit((self._block, *self._shape), self._generator, self._device)
            part = self._cache[: k - have]
            self._cache = self._cache[len(part):]
            parts.append(part)
            have += len(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _quiet(verbose: bool | None) -> bool | None:
    """tqdm's ``disable``: None lets tqdm show the bar only on a terminal."""
    return None if verbose is None else not verbose


def check_indices(indices, n_inputs: int) -> np.ndarray:
    """The inputs' global indices as an int64 array (default ``0..N-1``), or a clear error."""
    if indices is None:
        return np.arange(n_inputs)
    arr = np.asarray(indices)
    if arr.ndim != 1 or len(arr) != n_inputs:
        raise ValueError(f"indices must hold one index per input ({n_inputs}), got shape {arr.shape}")
    if len(arr) and (arr.dtype.kind not in "iu" and not np.all(np.mod(arr, 1) == 0) or np.any(arr < 0)):
        raise ValueError(f"indices must be non-negative integers (they key each input's noise), got {indices!r}")
    return arr.astype(np.int64)


def block_size(num: int, input_numel: int) -> int:
    """Draws per generator block: depends only on ``num`` and the input size, never on the batch size."""
    return int(max(1, min(num, NOISE_BLOCK_ELEMENTS // max(1, input_numel))))


def _plan_batches(nums: np.ndarray, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Cut the flat sequence of (input, draw) pairs into batches: lists of (input position, draws)."""
    batch, room = [], batch_size
    for i, num in enumerate(nums):
        left = int(num)
        while left > 0:
            k = min(left, room)
            batch.append((i, k))
            left -= k
            room -= k
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


def _checked_votes(votes: "torch.Tensor", expected: int, num_classes: int):
    """
    Reject vote functions that return scores, wrong shapes or out-of-range classes (they would miscount).

    A vote is either a class index per row, shape ``(B,)``, or a row of non-negative integer tallies, shape
    ``(B, C)`` (several votes cast by one noisy input, e.g. one per patch). :data:`INVALID` (a row of it for
    tallies) marks a noisy input whose base-classifier output was not finite.

    :return: ``(votes as long, invalid row mask)``.
    """
    import torch

    tallies = votes.dim() == 2
    shape_ok = votes.shape == ((expected, num_classes) if tallies else (expected,))
    if votes.dtype.is_floating_point or votes.dtype == torch.bool or not shape_ok:
        raise ValueError(
            f"a vote function must return integer class indices of shape ({expected},) or integer tallies of "
            f"shape ({expected}, {num_classes}), got shape {tuple(votes.shape)} and dtype {votes.dtype}"
        )
    votes = votes.to(torch.long)
    if tallies:
        invalid = (votes == INVALID).all(dim=1)
        if bool((votes[~invalid] < 0).any()):
            raise ValueError("a vote function returned negative tallies (a row of -1 marks a non-finite output)")
    else:
        invalid = votes == INVALID
        if bool(((votes < INVALID) | (votes >= num_classes)).any()):
            raise ValueError(f"a vote function returned a class outside 0..{num_classes - 1} "
                             f"(or {INVALID} for a non-finite output)")
    return votes, invalid


def non_finite_output_error(indices) -> "NonFiniteError":
    """The error for inputs whose base classifier gave NaN or infinite outputs on their noisy copies."""
    return NonFiniteError(
        f"the base classifier's output is NaN or infinite on noisy copies of input(s) {name_indices(indices)} "
        "(an overflow, or non-finite weights); no vote, count or certificate is given for them",
        indices,
    )


def count_votes(
    vote_fn: VoteFunction,
    x: "torch.Tensor",
    num: int,
    noise,
    *,
    num_classes: int,
    batch_size: int,
    seed: int,
    stage: int,
    indices: Sequence[int] | None = None,
    device: "torch.device | str | None" = None,
    squares: bool = False,
    invalid: np.ndarray | None = None,
    verbose: bool | None = False,
    desc: str = "draws",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """
    Count the votes of ``vote_fn`` on ``num`` noisy copies of each input.

    :param vote_fn: Maps a batch of noisy inputs ``(B, *input_shape)`` to class indices ``(B,)`` (long), or to
                    integer tallies ``(B, C)`` when one noisy input casts several votes (patches).
    :param x: Inputs ``(N, *input_shape)`` (tensor or array), in raw input space.
    :param num: Noisy draws per input: one number, or one per input (sequential CERTIFY packs inputs at different
                rounds into one call).
    :param noise: A noise model with ``perturb(x_rows, eps, owner)`` (e.g. :class:`GaussianNoise`).
    :param num_classes: Number of classes C.
    :param batch_size: Noisy inputs per forward pass; inputs are packed together when ``num`` is small.
    :param seed: Base seed.
    :param stage: ``SELECTION``, ``ESTIMATION`` or ``PREDICTION`` (independent streams).
    :param indices: Global index of each input (defaults to ``0..N-1``); keys the noise stream.
    :param device: Device for noise and forward passes (defaults to ``x``'s).
    :param squares: Also return the per-class sums of squared tallies (the second moment that empirical
                    Bernstein bounds need; equal to the counts for one vote per draw).
    :param invalid: Where a noisy copy gets an :data:`INVALID` vote (a NaN or infinite output), the default raises
                    :class:`~art_some.core.errors.NonFiniteError` at once, naming the inputs. A boolean array of
                    length N opts into marking instead: ``invalid[i]`` is set for each such input, whose count
                    rows are then all zeros (so PREDICT on them abstains; ``predict`` turns them into NaN rows).
    :param verbose: A progress bar over the draws (labelled ``desc``): True, False, or None for "when standard error is
                    a terminal". It appears only once a call has run for a second, so short calls stay quiet.
    :return: int64 array ``(N, C)`` of vote counts (row i sums to its ``num`` for class-index votes), and with
             ``squares`` the ``(N, C)`` sums of squared tallies too.
    """
    import torch

    nums = np.asarray(num)
    if nums.dtype == bool or nums.ndim > 1 or not np.all(np.mod(nums, 1) == 0) or np.any(nums < 1):
        raise ValueError(f"the number of noise draws must be an integer >= 1 (or one per input), got {num!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if invalid is not None and (invalid.dtype != bool or invalid.shape != (len(x),)):
        raise ValueError(f"invalid must be a boolean array of shape ({len(x)},)")
    x = torch.as_tensor(x)
    device = torch.device(device) if device is not None else x.device
    x = x.to(device=device, dtype=torch.float32)
    n_inputs = x.shape[0]
    indices = check_indices(indices, n_inputs)
    if nums.ndim == 1 and len(nums) != n_inputs:
        raise ValueError(f"num must be one number or one per input ({n_inputs}), got {len(nums)}")
    nums = np.broadcast_to(nums.astype(np.int64), (n_inputs,))
    numel = int(np.prod(x.shape[1:]))
    streams: dict[int, NoiseStream] = {}
    counts = torch.zeros((n_inputs, num_classes), dtype=torch.long, device=device)
    squared = torch.zeros_like(counts) if squares else None
    bar = tqdm(total=int(nums.sum()), desc=desc, unit="draw", unit_scale=True, disable=_quiet(verbose), delay=1.0,
               leave=False)
    with torch.inference_mode(), bar:
        for batch in _plan_batches(nums, batch_size):
            eps, owner = [], []
            for i, k in batch:
                if i not in streams:
                    streams[i] = NoiseStream(x.shape[1:], seed_for(seed, stage, indices[i]),
                                             block_size(int(nums[i]), numel), device, noise)
                eps.append(streams[i].take(k))
                owner.append(torch.full((k,), i, dtype=torch.long, device=device))
            eps_t = torch.cat(eps) if len(eps) > 1 else eps[0]
            owner_t = torch.cat(owner) if len(owner) > 1 else owner[0]
            votes, bad = _checked_votes(vote_fn(noise.perturb(x[owner_t], eps_t, owner_t)), len(owner_t), num_classes)
            first, last = batch[0][0], batch[-1][0]
            if bool(bad.any()):
                positions = torch.unique(owner_t[bad]).cpu().numpy()
                if invalid is None:
                    raise non_finite_output_error(indices[positions])
                invalid[positions] = True
                # Any value keeps the counting valid: the rows of these inputs are zeroed before returning.
                votes = torch.where(bad.view(-1, *([1] * (votes.dim() - 1))), torch.zeros_like(votes), votes)
            if votes.dim() == 2:
                counts.index_add_(0, owner_t, votes)
                if squared is not None:
                    squared.index_add_(0, owner_t, votes * votes)
            else:
                # Count per batch over just the inputs it touches: a few rows of C bins, whatever N is.
                span = last - first + 1
                local = torch.bincount((owner_t - first) * num_classes + votes, minlength=span * num_classes)
                counts[first : last + 1] += local.view(span, num_classes)
                if squared is not None:
                    squared[first : last + 1] += local.view(span, num_classes)
            # Streams of finished inputs are dropped so cached blocks do not pile up.
            for i in list(streams):
                if i < last:
                    del streams[i]
            bar.update(sum(k for _, k in batch))
    counts = counts.cpu().numpy()
    squared = None if squared is None else squared.cpu().numpy()
    if invalid is not None and invalid.any():
        counts[invalid] = 0  # a count from an input with a non-finite output is never returned
        if squared is not None:
            squared[invalid] = 0
    if squared is not None:
        return counts, squared
    return counts


def expected_scores(scores_fn: Callable, z0: "torch.Tensor", noise, *, num: int, batch_size: int,
                    draw: Callable) -> "torch.Tensor":
    """
    E[scores_fn(z0 + delta)] per input, delta from ``noise``, estimated from ``num`` draws per input: the soft
    smoothed classifier that EOT gradients differentiate (Salman et al.), written once. Differentiable in ``z0``;
    memory O(batch_size), in chunks of ``batch_size // num`` inputs.

    :param scores_fn: Maps noisy inputs ``(B, *shape)`` to scores ``(B, C)`` (e.g. softmax of the logits).
    :param z0: Clean inputs in noise space ``(N, *shape)``.
    :param noise: A noise model (``perturb(x_rows, eps, owner)``; a per-input sigma is indexed by position in z0).
    :param num: Draws per input.
    :param batch_size: Noisy inputs per forward pass.
    :param draw: ``draw(shape) -> standard normal tensor`` (the caller's stream, e.g. the GRADIENT stage's).
    """
    import torch

    chunk = max(1, int(batch_size) // int(num))
    out = []
    for start in range(0, len(z0), chunk):
        rows = z0[start : start + chunk].repeat_interleave(num, dim=0)
        owner = torch.arange(start, start + len(rows) // num, device=z0.device).repeat_interleave(num)
        out.append(scores_fn(noise.perturb(rows, draw(rows.shape), owner)).view(len(rows) // num, num, -1).mean(dim=1))
    return torch.cat(out) if out else z0.new_zeros((0, 0))
