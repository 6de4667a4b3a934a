"""
Patch geometry for patch smoothing (Smooth-Reduce): where the patches sit, how many patches cover each pixel,
and the norms of the linear maps between the input and the space the noise lives in.

A sample is ``(C, *spatial)``: ``(C, H, W)`` for images, ``(C, T, H, W)`` for videos. A :class:`PatchLayout`
crops every non-channel axis, so a video's temporal window is a patch of size ``(L, H, W)``.

Two facts carry the certificates (see the Smooth-Reduce spec, section 5):

- stacking the P crops is a linear map A with A^T A = diag(coverage), so ``||A|| = sqrt(max coverage)``;
- a resize is linear and separable, so its operator norm is the product of its one-axis matrices' norms,
  computed here from the very :func:`resize` the estimator applies.

| Paper link: https://arxiv.org/abs/2205.06154
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

RESIZE_MODES = ("linear", "nearest", "cubic")


@dataclass(frozen=True, eq=False)
class PatchLayout:
    """
    P crops of size ``patch_size`` at integer ``offsets`` (P, d) inside an input of extent ``input_size`` (d axes).

    :param input_size: Extent of each cropped axis (after any resize of the whole input).
    :param patch_size: Extent of each crop.
    :param offsets: Start of each crop on each axis, ``0 <= offset <= input - patch``.
    :param kind: How the offsets were made (``grid``, ``random``, ``corners`` or ``custom``), for records.
    """

    input_size: tuple[int, ...]
    patch_size: tuple[int, ...]
    offsets: np.ndarray = field(repr=False)
    kind: str = "custom"

    def __post_init__(self):
        inp, patch = tuple(int(v) for v in self.input_size), tuple(int(v) for v in self.patch_size)
        object.__setattr__(self, "input_size", inp)
        object.__setattr__(self, "patch_size", patch)
        offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1, len(inp))
        object.__setattr__(self, "offsets", offsets)
        _check_patch_fits(inp, patch)
        if len(offsets) == 0:
            raise ValueError("a patch layout needs at least one patch")
        high = np.asarray(inp) - np.asarray(patch)
        if np.any(offsets < 0) or np.any(offsets > high):
            raise ValueError(f"patch offsets must lie in [0, input - patch] = [0, {tuple(high.tolist())}] per axis")

    @property
    def num_patches(self) -> int:
        return len(self.offsets)

    def coverage(self) -> np.ndarray:
        """How many patches contain each position of the input, an int array of shape ``input_size``."""
        cover = np.zeros(self.input_size, dtype=np.int64)
        for start in self.offsets:
            cover[tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))] += 1
        return cover

    @property
    def max_coverage(self) -> int:
        """m_max: the largest number of patches sharing one position; ``||A|| = sqrt(m_max)``."""
        return int(self.coverage().max())

    def flat_indices(self) -> np.ndarray:
        """``(P, prod(patch_size))`` positions of each patch's elements in the flattened input (row-major)."""
        grids = np.meshgrid(*[np.arange(p) for p in self.patch_size], indexing="ij")
        inside = np.stack(grids, -1).reshape(-1, self.dim)
        positions = self.offsets[:, None, :] + inside[None]  # (P, K, d)
        return np.ravel_multi_index(tuple(np.moveaxis(positions, -1, 0)), self.input_size)

    @property
    def dim(self) -> int:
        return len(self.input_size)

    def crop(self, x: "torch.Tensor") -> "torch.Tensor":
        """
        All P crops of a batch in one gather: ``(B, C, *input_size)`` to ``(B, P, C, *patch_size)``;
        differentiable, on ``x``'s device.
        """
        import torch

        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"inputs to crop must have spatial size {self.input_size}, got {tuple(x.shape[2:])}")
        index = torch.as_tensor(self.flat_indices(), device=x.device)
        patches = x.flatten(2)[:, :, index]  # (B, C, P, K)
        return patches.movedim(2, 1).reshape(x.shape[0], self.num_patches, x.shape[1], *self.patch_size)

    def describe(self) -> dict:
        """A JSON-able summary for records and reports."""
        return {"layout": self.kind, "patches": self.num_patches, "patch_size": list(self.patch_size),
                "m_max": self.max_coverage}


def _check_patch_fits(input_size: Sequence[int], patch_size: Sequence[int]) -> None:
    if len(input_size) != len(patch_size):
        raise ValueError(f"patch_size {tuple(patch_size)} must have one entry per cropped axis of {tuple(input_size)}")
    if any(p < 1 for p in patch_size):
        raise ValueError(f"patch_size entries must be >= 1, got {tuple(patch_size)}")
    if any(p > s for p, s in zip(patch_size, input_size)):
        raise ValueError(f"patch_size {tuple(patch_size)} is larger than the input {tuple(input_size)}")


def _full(input_size, patch_size) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sizes as int tuples; one int is a square (cubic) patch, and a patch entry of None spans its whole axis."""
    input_size = tuple(int(s) for s in np.atleast_1d(input_size))
    if isinstance(patch_size, (int, np.integer)):
        patch_size = (int(patch_size),) * len(input_size)
    patch_size = tuple(patch_size)
    if len(patch_size) == len(input_size):
        patch_size = tuple(s if p is None else int(p) for p, s in zip(patch_size, input_size))
    _check_patch_fits(input_size, patch_size)
    return input_size, patch_size


def grid_layout(input_size, patch_size, stride, num_patches: int | None = None) -> PatchLayout:
    """
    The deterministic grid of the official code (``unfold`` with no padding): offsets ``0, stride, ...`` up to
    ``input - patch`` on each axis, in row-major order, optionally only the first ``num_patches``.

    :param input_size: Extent of each cropped axis.
    :param patch_size: Crop extent (one int for a square patch; None spans an axis).
    :param stride: Step between offsets (one int or one per axis).
    :param num_patches: Keep only the first P patches in row-major order.
    """
    input_size, patch_size = _full(input_size, patch_size)
    strides = np.broadcast_to(np.asarray(stride, dtype=np.int64), (len(input_size),))
    if np.any(strides < 1):
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    axes = [np.arange(0, s - p + 1, st) for s, p, st in zip(input_size, patch_size, strides)]
    offsets = np.array(list(itertools.product(*axes)), dtype=np.int64)
    if num_patches is not None:
        if not 1 <= num_patches <= len(offsets):
            raise ValueError(f"num_patches must lie in 1..{len(offsets)} for this grid, got {num_patches}")
        offsets = offsets[:num_patches]
    return PatchLayout(input_size, patch_size, offsets, "grid")


def random_layout(input_size, patch_size, num_patches: int, seed: int = 0, replace: bool = True) -> PatchLayout:
    """
    Seeded random offsets, uniform over every valid position ``0..input - patch`` (inclusive: the official
    code's ``randint`` never reaches the last offset). Drawn once from ``seed``, independently of the input, so
    the smoothed classifier is one fixed function.

    :param input_size: Extent of each cropped axis.
    :param patch_size: Crop extent.
    :param num_patches: P.
    :param seed: Seed of the offsets.
    :param replace: Draw with replacement (the official code; duplicates possible) or without.
    """
    input_size, patch_size = _full(input_size, patch_size)
    if int(num_patches) < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    rng = np.random.default_rng(seed)
    extent = np.asarray(input_size) - np.asarray(patch_size) + 1
    if replace:
        offsets = rng.integers(0, extent, size=(int(num_patches), len(input_size)))
    else:
        total = int(np.prod(extent))
        if num_patches > total:
            raise ValueError(f"only {total} distinct patch positions exist; num_patches={num_patches} needs "
                             "replace=True")
        flat = rng.choice(total, size=int(num_patches), replace=False)
        offsets = np.stack(np.unravel_index(flat, tuple(extent)), axis=-1)
    return PatchLayout(input_size, patch_size, offsets, "random")


def corner_layout(input_size, patch_size) -> PatchLayout:
    """The crops at the corners (4 for images; duplicates removed where a patch spans an axis)."""
    input_size, patch_size = _full(input_size, patch_size)
    ends = [sorted({0, s - p}) for s, p in zip(input_size, patch_size)]
    return PatchLayout(input_size, patch_size, np.array(list(itertools.product(*ends))), "corners")


LAYOUTS = {"grid": grid_layout, "random": random_layout, "corners": corner_layout}


def make_layout(kind: str, input_size, patch_size, **options) -> PatchLayout:
    """
    A layout by name: ``grid`` (``stride``, ``num_patches``), ``random`` (``num_patches``, ``seed``, ``replace``)
    or ``corners``.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"unknown patch layout {kind!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[kind](input_size, patch_size, **options)


# ----------------------------------------------------------------------------------------------------------------
# Resizing and its operator norm
# ----------------------------------------------------------------------------------------------------------------
def _torch_mode(mode: str, dims: int) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "nearest":
        return "nearest"
    if mode == "cubic":
        if dims != 2:
            raise ValueError("resize mode 'cubic' is only available for images (2 spatial axes)")
        return "bicubic"
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]


def resize(x: "torch.Tensor", size: Sequence[int], mode: str = "linear") -> "torch.Tensor":
    """
    Resize the spatial axes of ``(B, C, *spatial)`` to ``size`` (``torch.nn.functional.interpolate`` with
    ``align_corners=False``; antialiased when shrinking an image, as torchvision's ``Resize``). Linear and
    differentiable.
    """
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    torch_mode = _torch_mode(mode, len(size))
    options = {} if torch_mode == "nearest" else {"align_corners": False}
    if torch_mode in ("bilinear", "bicubic") and any(o < i for o, i in zip(size, x.shape[2:])):
        options["antialias"] = True
    return F.interpolate(x, size=size, mode=torch_mode, **options)


def resize_axis_matrices(input_size: Sequence[int], output_size: Sequence[int], mode: str = "linear",
                         dtype=None, device=None) -> list:
    """
    The one-axis matrices ``(out_a, in_a)`` of :func:`resize`, read off the real resize applied to inputs that
    vary along one axis only, and checked: the resize of a random input must equal applying them axis by axis
    (separability), otherwise this raises rather than report a wrong norm.

    :param dtype: torch dtype of the computation (default float64); ``nearest`` index rounding can depend on it.
    :param device: torch device of the computation (default CPU).
    """
    import torch

    dtype = torch.float64 if dtype is None else dtype
    input_size, output_size = tuple(int(v) for v in input_size), tuple(int(v) for v in output_size)
    dims = len(input_size)
    matrices = []
    for axis, n_in in enumerate(input_size):
        shape = [1] * dims
        shape[axis] = n_in
        basis = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, 1, *shape).expand(n_in, 1, *input_size)
        out = resize(basis.contiguous(), output_size, mode)[:, 0]  # constant along the other axes
        line = out[(slice(None),) + tuple(slice(None) if a == axis else 0 for a in range(dims))]
        matrices.append(line.T.double().cpu().numpy())
    probe_np = np.random.default_rng(0).standard_normal((1, 1, *input_size))
    expected = probe_np[0, 0]
    for axis, matrix in enumerate(matrices):
        expected = np.moveaxis(np.tensordot(matrix, expected, axes=([1], [axis])), 0, axis)
    actual = resize(torch.as_tensor(probe_np, dtype=dtype, device=device), output_size, mode)[0, 0]
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    if not np.allclose(actual.double().cpu().numpy(), expected, atol=tolerance):
        raise ValueError(f"the {mode!r} resize from {input_size} to {output_size} is not separable here")
    return matrices


def resize_operator_norm(input_size: Sequence[int], output_size: Sequence[int], mode: str = "linear",
                         device=None) -> float:
    """
    The L2 operator norm of :func:`resize` from ``input_size`` to ``output_size``: the product over axes of each
    axis matrix's largest singular value (the resize is a Kronecker product of axis maps, verified in
    :func:`resize_axis_matrices`, and acts on each channel alike). About 1.13 for bilinear 32 to 36.

    Computed in float64 on the CPU and in float32 on ``device`` (where certification runs; ``nearest`` rounding can
    differ between them), and the larger value is returned, so it bounds the resize as applied.
    """
    import torch

    input_size, output_size = tuple(input_size), tuple(output_size)
    if len(input_size) != len(output_size):
        raise ValueError(f"resize from {input_size} to {output_size}: the number of axes differs")
    if input_size == output_size:
        return 1.0
    norms = []
    for dtype, where in ((torch.float64, "cpu"), (torch.float32, device or "cpu")):
        matrices = resize_axis_matrices(input_size, output_size, mode, dtype=dtype, device=where)
        norms.append(float(np.prod([np.linalg.norm(m, 2) for m in matrices])))
    return max(norms)
