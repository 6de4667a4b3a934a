"""
Input-dependent randomized smoothing: the sound certificate of Súkeník, Kuvshinov & Günnemann (ICML 2022).

When the noise level ``sigma(x)`` depends on the input, Cohen et al.'s radius is no longer valid: the smoothed
classifier at ``x1 = x0 + delta`` averages over ``N(x1, sigma(x1)^2 I)``, not ``N(x1, sigma(x0)^2 I)``. If ``sigma``
is r-semi-elastic, ``|ln sigma(x) - ln sigma(x')| <= r ||x - x'||_2``, then ``sigma1 = sigma(x1)`` lies in
``[sigma0 e^(-r ||delta||), sigma0 e^(r ||delta||)]`` and the Neyman-Pearson lemma between ``N(x0, sigma0^2 I)`` and
``N(x1, sigma1^2 I)`` bounds the top-class probability at ``x1`` for every such ``sigma1``.

For ``sigma1 != sigma0`` the likelihood ratio is monotone in ``||x - c||`` with
``c = (sigma0^2 x1 - sigma1^2 x0) / (sigma0^2 - sigma1^2)``, so the worst class-A set is a ball around ``c`` (its inside
when ``sigma1 > sigma0``, its outside otherwise). Since ``x0 - c = sigma0^2 (x0 - x1) / (sigma0^2 - sigma1^2)``,
``||X - c||^2 / sigma0^2`` is non-central chi-square with ``d`` degrees of freedom and non-centrality
``lambda0 = sigma0^2 ||delta||^2 / (sigma0^2 - sigma1^2)^2`` under ``x0``; likewise ``x1 - c`` gives
``lambda1 = sigma1^2 ||delta||^2 / (sigma0^2 - sigma1^2)^2`` under ``x1``. The same sphere ``||X - c||^2 = s`` reads
``t = s / sigma0^2`` in the first normalisation and ``t sigma0^2 / sigma1^2`` in the second.

The bounds are computed in float64 on the host with :mod:`scipy.stats`; :class:`KNNSigma` runs on the input's device.

| Paper link: https://arxiv.org/abs/2110.05365
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import ncx2, norm

from art_some.core.stats import gaussian_radius
from art_some.core.validate import integer, nonnegative, positive, unit_interval

if TYPE_CHECKING:
    import torch

# Up to this non-centrality scipy's ncx2 agreed with an independent quadrature to ~1e-10 in our checks; its cost grows
# like sqrt(lambda) (~10 ms per quantile here) and it returns NaN near 1e11. Larger lambda means sigma1 is within
# about ||delta|| / (6e4 sigma0) of sigma0, where the sound two-step bound is used instead.
MAX_NONCENTRALITY = 1e9
# KNNSigma re-measures this many nearest candidates beyond the k-th exactly (see _mean_knn_distance).
_SHORTLIST_EXTRA = 8
# Rows of queries x reference points (or shortlisted features) held at once by KNNSigma: 128 MB in float64.
_CHUNK_ELEMENTS = 2**24


def _check_rate(rate) -> float:
    if np.ndim(rate) != 0 or not (float(rate) >= 0.0 and math.isfinite(float(rate))):
        raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
    return float(rate)


def _cohen_bound(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    # Equal noise levels: the worst set is a half-space (Cohen et al.); shift = ||delta|| / sigma.
    return norm.cdf(norm.ppf(p) - shift)


def _neyman_pearson_bound(p: np.ndarray, shift: np.ndarray, ratio: np.ndarray, dim: int) -> np.ndarray:
    """Exact worst case for 1-D arrays with ``ratio = sigma1 / sigma0 != 1`` and ``shift = ||delta|| / sigma0``."""
    gap = (1.0 - ratio) * (1.0 + ratio)  # 1 - ratio^2 without cancellation
    lam0 = (shift / gap) ** 2
    lam1 = ratio**2 * lam0
    q = 1.0 - p  # exact for p >= 1/2; the tail functions below then keep their precision near p = 1
    out = np.empty_like(p)
    inside = ratio > 1.0
    # sigma1 > sigma0: A is the inside of the ball, P0(||X - c||^2 / sigma0^2 <= t) = p.
    t = ncx2.isf(q[inside], dim, lam0[inside])
    out[inside] = ncx2.cdf(t / ratio[inside] ** 2, dim, lam1[inside])
    # sigma1 < sigma0: A is the outside of the ball, P0(||X - c||^2 / sigma0^2 >= t) = p.
    outside = ~inside
    t = ncx2.ppf(q[outside], dim, lam0[outside])
    out[outside] = ncx2.sf(t / ratio[outside] ** 2, dim, lam1[outside])
    return out


def _two_step_bound(p: np.ndarray, shift: np.ndarray, ratio: np.ndarray, dim: int) -> np.ndarray:
    """
    A lower bound for ``sigma1`` too close to ``sigma0`` for ncx2: pass through an intermediate Gaussian.

    Any A with P(N(x0, s0^2)) >= p has P(N(x1, s0^2)) >= Cohen's bound, and the worst case of a pure change of scale
    around x1 (central chi-square, no lambda) is increasing in the mass it starts from, so chaining the two exact
    worst cases never exceeds the true one; the same holds with the scale changed first (then the shift is measured
    in units of sigma1). Both are sound, so is their maximum. Loose by O(|ratio - 1| sqrt(d)) in z-units.
    """
    zero = np.zeros_like(shift)
    shift_first = _neyman_pearson_bound(_cohen_bound(p, shift), zero, ratio, dim)
    scale_first = _cohen_bound(_neyman_pearson_bound(p, zero, ratio, dim), shift / ratio)
    return np.maximum(shift_first, scale_first)


def _bound(p, shift, ratio, dim: int, screen: float = np.inf) -> np.ndarray:
    """
    The bound on flattened broadcast arrays. Where the cheap two-step bound already exceeds ``screen``, it is kept
    instead of the exact one: a certificate that only asks "is the bound > 1/2?" then gets the same answer without
    calling ncx2 (whose cost grows with lambda) on every grid point.
    """
    p, shift, ratio = (np.array(a, dtype=np.float64).ravel() for a in np.broadcast_arrays(p, shift, ratio))
    out = _cohen_bound(p, shift)  # exact where ratio == 1
    unequal = np.flatnonzero(ratio != 1.0)
    out[unequal] = _two_step_bound(p[unequal], shift[unequal], ratio[unequal], dim)
    todo = unequal[out[unequal] <= screen]
    gap = (1.0 - ratio[todo]) * (1.0 + ratio[todo])
    lam = (shift[todo] / gap) ** 2 * np.maximum(ratio[todo], 1.0) ** 2  # max(lambda0, lambda1)
    # Near sigma0 (huge lambda), or where ncx2 gives up (NaN), the sound two-step bound stays.
    exact = todo[lam <= MAX_NONCENTRALITY]
    value = _neyman_pearson_bound(p[exact], shift[exact], ratio[exact], dim)
    ok = ~np.isnan(value)
    out[exact[ok]] = value[ok]
    return out


def semi_elastic_bound(p_lower, distance, sigma0, sigma1, dim: int) -> np.ndarray:
    """
    Worst-case lower bound on ``P(f(x1 + sigma1 eps) = A)`` given ``P(f(x0 + sigma0 eps) = A) >= p_lower``, where
    ``||x1 - x0||_2 = distance`` and ``eps ~ N(0, I_dim)``; arguments broadcast against each other.

    Guarantee: for every set A with ``N(x0, sigma0^2 I)``-mass at least ``p_lower``, the ``N(x1, sigma1^2 I)``-mass
    of A is at least the returned value (up to the float accuracy of scipy's chi-square functions, ~1e-10). It is the
    exact infimum (attained by a ball around ``c``, see the module docstring) when ``sigma1 == sigma0`` (Cohen's
    ``Phi(Phi^-1(p_lower) - distance / sigma0)``) or when the non-centrality is at most :data:`MAX_NONCENTRALITY`;
    closer to ``sigma0`` (where ncx2 is slow and then fails) a slightly smaller two-step bound is returned, which is
    sound and tends to Cohen's bound as ``sigma1 -> sigma0``.

    :param p_lower: Lower bound(s) on the class probability at ``x0``, in [0, 1].
    :param distance: ``||x1 - x0||_2`` (>= 0).
    :param sigma0: Noise level(s) at ``x0`` (> 0).
    :param sigma1: Noise level(s) at ``x1`` (> 0).
    :param dim: Input dimension d (integer >= 1).
    :return: float64 array of lower bounds, broadcast over the first four arguments.
    """
    p = unit_interval("p_lower", p_lower)
    distance = nonnegative("distance", distance)
    sigma0 = positive("sigma0", sigma0)
    sigma1 = positive("sigma1", sigma1)
    dim = integer("dim", dim, 1)
    shape = np.broadcast_shapes(p.shape, distance.shape, sigma0.shape, sigma1.shape)
    return _bound(p, distance / sigma0, sigma1 / sigma0, dim).reshape(shape)


def semi_elastic_radius(p_lower, sigma0, rate: float, dim: int, *, radius_steps: int = 100,
                        sigma_steps: int = 41) -> np.ndarray:
    """
    Certified L2 radius of input-dependent smoothing with an r-semi-elastic ``sigma`` (Súkeník et al.).

    A distance D is certified when the worst-case bound (:func:`semi_elastic_bound`) stays above 1/2 for every
    admissible ``sigma1`` in ``[sigma0 e^(-r D), sigma0 e^(r D)]``. As in the paper, that minimum over ``sigma1`` is
    taken on a grid: ``sigma_steps`` log-spaced values including both ends, plus ``sigma0`` itself. D is searched on
    the grid ``k * R / radius_steps`` (k = 0 .. radius_steps; 1% steps by default) up to Cohen's radius
    ``R = sigma0 Phi^-1(p_lower)``, an upper bound since ``sigma1 = sigma0`` is always admissible; the result is the
    last grid point that passes before the first one that fails. Radii shorter than one step (``R / radius_steps``)
    are therefore reported as 0, which happens when ``r sqrt(d) sigma0`` is large.

    Guarantee: 0.0 where ``p_lower <= 1/2``; never more than Cohen's radius; exactly Cohen's radius when
    ``rate == 0``; ``inf`` where ``p_lower == 1`` (every Gaussian then gives class A mass 1).

    :param p_lower: Lower bound(s) on the top-class probability at ``x0``.
    :param sigma0: Noise level(s) ``sigma(x0)`` (> 0), broadcast against ``p_lower``.
    :param rate: The semi-elasticity constant r (Lipschitz constant of ``ln sigma``), finite and >= 0.
    :param dim: Input dimension d (integer >= 1).
    :param radius_steps: Number of steps of the distance grid (integer >= 1).
    :param sigma_steps: Number of ``sigma1`` grid values (integer >= 2).
    :return: float64 array of radii, one per broadcast input.
    """
    p = unit_interval("p_lower", p_lower)
    sigma0 = positive("sigma0", sigma0)
    rate = _check_rate(rate)
    dim = integer("dim", dim, 1)
    radius_steps = integer("radius_steps", radius_steps, 1)
    sigma_steps = integer("sigma_steps", sigma_steps, 2)
    p, sigma0 = (np.array(a, dtype=np.float64) for a in np.broadcast_arrays(p, sigma0))
    cohen = np.asarray(gaussian_radius(p, sigma0), dtype=np.float64)
    if rate == 0.0:
        return cohen
    shape = p.shape
    p, sigma0, cohen = p.ravel(), sigma0.ravel(), cohen.ravel()
    radius = np.where(p == 1.0, np.inf, 0.0)
    active = (p > 0.5) & (p < 1.0)
    # ln(sigma1 / sigma0) in units of r D; the appended 0 puts sigma0 itself on the grid whatever sigma_steps is.
    unit = np.append(np.linspace(-1.0, 1.0, sigma_steps), 0.0)
    for k in range(1, radius_steps + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        dist = cohen[idx] * k / radius_steps
        ratio = np.exp(rate * dist[:, None] * unit)
        shift = (dist / sigma0[idx])[:, None]
        worst = _bound(p[idx, None], shift, ratio, dim, screen=0.5).reshape(ratio.shape).min(axis=1)
        passed = worst > 0.5
        radius[idx[passed]] = dist[passed]
        active[idx[~passed]] = False
    return radius.reshape(shape)


class KNNSigma:
    """
    Súkeník et al.'s semi-elastic noise level
    ``sigma(x) = sigma_base * exp(rate * (mean L2 distance from x to its k nearest reference points - offset))``.

    Guarantee: the mean distance to the k nearest points of a fixed set is 1-Lipschitz (each order statistic of
    1-Lipschitz distances is), so ``ln sigma`` is ``rate``-Lipschitz: pass the same ``rate`` to
    :func:`semi_elastic_radius`. Distances are float64 (float32 on Apple MPS, which lacks float64).

    :param reference: Reference points, array of shape ``(N, ...)`` (flattened to ``(N, features)``).
    :param sigma_base: Noise level at the typical point (> 0).
    :param rate: ``r >= 0``, finite.
    :param k: Number of neighbours, integer in ``[1, N]`` (``[1, N - 1]`` when ``offset`` is None).
    :param offset: Distance subtracted in the exponent; None takes the median over the reference points of their own
        mean kNN distance (themselves excluded), so sigma is about ``sigma_base`` on typical data.
    """

    def __init__(self, reference, sigma_base: float, rate: float, k: int = 20, offset: float | None = None):
        import torch

        if isinstance(reference, torch.Tensor):
            reference = reference.detach().cpu().numpy()
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim == 0 or len(ref) == 0 or not np.all(np.isfinite(ref)):
            raise ValueError("reference must be a finite array of shape (N, ...) with N >= 1")
        self.sigma_base = float(positive("sigma_base", sigma_base))
        self.rate = _check_rate(rate)
        self.k = integer("k", k, 1, len(ref) if offset is not None else len(ref) - 1)
        self._reference = torch.from_numpy(ref.reshape(len(ref), -1))
        self._on_device: dict = {}
        if offset is None:
            offset = float(np.median(self._mean_knn_distance(self._reference, exclude_self=True).numpy()))
        elif not (np.ndim(offset) == 0 and math.isfinite(float(offset))):
            raise ValueError(f"offset must be a finite number or None, got {offset!r}")
        self.offset = float(offset)

    @property
    def features(self) -> int:
        """Number of features of a (flattened) input."""
        return int(self._reference.shape[1])

    def __call__(self, x):
        """
        Noise level per row of ``x``.

        :param x: numpy array or torch tensor of shape ``(B, ...)`` with ``features`` entries per row.
        :return: float64 numpy array of shape ``(B,)`` for numpy input; for a tensor, a tensor on its device in its
            (floating) dtype.
        """
        import torch

        if isinstance(x, torch.Tensor):
            dtype = torch.float32 if x.device.type == "mps" else torch.float64
            mean = self._mean_knn_distance(self._flat(x.detach()).to(dtype))
            out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
            return self._sigma(mean).to(out_dtype)
        return self._sigma(self._mean_knn_distance(torch.from_numpy(self._flat(np.asarray(x, np.float64))))).numpy()

    def _flat(self, x):
        if x.ndim == 0 or math.prod(x.shape[1:]) != self.features:
            raise ValueError(f"x must have shape (B, ...) with {self.features} features per row, got {tuple(x.shape)}")
        return x.reshape(len(x), self.features)

    def _sigma(self, mean: "torch.Tensor") -> "torch.Tensor":
        return self.sigma_base * (self.rate * (mean - self.offset)).exp()

    def _reference_like(self, x: "torch.Tensor") -> "torch.Tensor":
        key = (x.device, x.dtype)
        if key not in self._on_device:
            self._on_device[key] = self._reference.to(device=x.device, dtype=x.dtype)
        return self._on_device[key]

    def _mean_knn_distance(self, queries: "torch.Tensor", exclude_self: bool = False) -> "torch.Tensor":
        """Mean distance from each query row to its k nearest reference rows (query i is reference i if excluded)."""
        import torch

        ref = self._reference_like(queries)
        pool = len(ref) - 1 if exclude_self else len(ref)
        width = min(self.k + _SHORTLIST_EXTRA, pool)
        chunk = max(1, _CHUNK_ELEMENTS // max(len(ref), width * self.features))
        means = []
        for start in range(0, len(queries), chunk):
            q = queries[start:start + chunk]
            # The matrix-product distances are fast but lose precision near 0 (a square root of a cancelled
            # difference), which would break the Lipschitz guarantee next to a reference point: they only
            # shortlist candidates, which are then measured directly.
            rough = torch.cdist(q, ref)
            rows = torch.arange(len(q), device=q.device)
            if exclude_self:
                rough[rows, rows + start] = float("inf")
            idx = rough.topk(width, dim=1, largest=False).indices
            exact = (q[:, None, :] - ref[idx]).norm(dim=2)
            means.append(exact.topk(self.k, dim=1, largest=False).values.mean(dim=1))
        if not means:
            return queries.new_zeros(0)
        return torch.cat(means)
