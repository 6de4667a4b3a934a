"""
The memory-based certifier of Data Dependent Randomized Smoothing (Alfarra et al., UAI 2022).

Smoothing with a per-input (data-dependent) sigma gives each input its own certificate, and two such certificates
can contradict each other: overlapping L2 balls that carry different classes. The memory-based certifier repairs
this *a posteriori* by remembering every answered input and adjusting each new answer so that certified balls of
different classes never intersect. It is an explicit, stateful, order-dependent object: the same inputs queried in
a different order can get different labels and radii.

| Paper link: https://arxiv.org/abs/2012.04351
"""
from __future__ import annotations

import numpy as np

_MIN_CAPACITY = 16


def _as_labels(labels, name: str) -> np.ndarray:
    """Integer class labels >= -1 (-1 means abstain) as int64; whole-number floats are accepted."""
    arr = np.asarray(labels)
    integral = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr)))
    )
    if not integral:
        raise ValueError(f"{name} must hold integer class labels (-1 for abstain), got {labels!r}")
    arr = arr.astype(np.int64)
    if np.any(arr < -1):
        raise ValueError(f"{name} must be >= -1 (-1 means abstain), got {labels!r}")
    return arr


def _as_radii(radii, name: str) -> np.ndarray:
    """Finite, non-negative radii as float64."""
    arr = np.asarray(radii)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got {radii!r}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {radii!r}")
    return arr


def _as_rows(x, name: str) -> np.ndarray:
    """An (n, ...) batch as a finite float64 (n, d) array, one flattened input per row."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (n, ...) with one input per row, got shape {arr.shape}")
    rows = arr.astype(np.float64).reshape(len(arr), int(np.prod(arr.shape[1:])))
    if rows.shape[1] == 0 or not np.all(np.isfinite(rows)):
        raise ValueError(f"{name} must be non-empty inputs with finite entries")
    return rows


class MemoryCertifier:
    """
    Memory-based certification (Alfarra et al., UAI 2022): post-processing of (label, L2 radius) results.

    The memory ``M = [(x_i, c_i, R_i)]`` holds every input answered so far, in query order. A new input ``x`` with
    its own result ``(c, R)`` (abstention is ``c = -1``, usually with ``R = 0``; -1 is treated as an ordinary class):

    1. ``d_i = ||x - x_i||_2`` for every memory entry (inputs are flattened);
    2. the conflict set is ``C = {i : d_i < R_i + R and c_i != c}``: intersecting balls of another class;
    3. if ``C`` is empty, ``(x, c, R)`` is memorised and returned unchanged;
    4. otherwise ``m = min_{i in C} (d_i - R_i)``, attained at ``j`` (the earliest entry on ties):
       if ``m < 0`` (``x`` lies inside ball ``j``) the answer becomes ``(c_j, R_j - d_j)``;
       if ``m >= 0`` the class stays ``c`` and the radius shrinks to ``m``;
    5. the adjusted ``(x, c, R)`` is memorised and returned.

    Invariant (checked by the tests, holds up to float rounding): any two memorised entries of different classes
    satisfy ``d >= R_i + R_k``. Balls of one class may overlap and are left alone. Why it holds: with ``m >= 0`` the
    new radius is ``m < R``, so entries in ``C`` get ``d_i >= R_i + m`` by the choice of ``m`` and other-class entries
    outside ``C`` already had ``d_i >= R_i + R > R_i + m``. With ``m < 0`` the new ball ``B(x, R_j - d_j)`` lies inside
    ball ``j``, which keeps the invariant against every class other than ``c_j`` (the query's own class ``c``
    included), so the new ball does too.

    What is guaranteed: if an answer ``(x_i, c_i, R_i)`` was issued, every later query ``x'`` with
    ``||x' - x_i|| < R_i`` is answered ``c_i`` (a later query inside ball ``i`` either has class ``c_i``, and cannot
    sit inside any other-class ball, or is moved into the class of the ball it sits in, which must be ``c_i``).
    The guarantee covers only queries made after the certifying query, on this object, until :meth:`reset`. (As a
    consequence of the invariant, earlier answers also never lie inside a later ball of another class.)

    What is *not* guaranteed: this is not a certificate of a stateless classifier. The results depend on the query
    order (:meth:`process` with another ``order`` may give other labels and radii, even for the first input), and
    inputs never queried through this object are not covered. The certificates bind only this object's own answers:
    they hold by construction whatever radii are fed in (a huge first radius simply claims everything), so they are
    only as meaningful as the incoming radii, and they say nothing about the smoothed classifier's answers outside
    the memory. Every past input is kept: each query costs ``O(|M| d)`` time and the memory grows without bound.

    Corner cases of the rule as stated (implemented faithfully):

    * zero-radius entries, including abstentions ``(-1, 0)``, still count: a later other-class ball is shrunk so that
      it does not cover their centre (``d_i < 0 + R`` puts them in ``C``), although an open ball of radius 0 is empty;
      this is what keeps earlier answers consistent with later balls;
    * an abstention (or any answer) inside a memorised ball of another class is converted to that class with a
      positive radius, so the memory can turn abstentions into certified predictions;
    * a query with ``R = 0`` never reaches the ``m >= 0`` branch; a result with ``m = 0`` keeps its class with radius 0;
    * conflicts use the strict ``<``: balls that only touch (``d = R_i + R``) are not in conflict.
    """

    def __init__(self):
        self.reset()

    def __len__(self) -> int:
        return self._size

    def reset(self) -> None:
        """Forget every memorised input (and the input dimension)."""
        self._inputs = np.empty((0, 0), dtype=np.float64)
        self._labels = np.empty(0, dtype=np.int64)
        self._radii = np.empty(0, dtype=np.float64)
        self._size = 0

    @property
    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        The memory in query order, as read-only copies.

        :return: ``(inputs, labels, radii)``: float64 ``(|M|, d)`` flattened inputs (``(0, 0)`` when empty), int64
            labels and float64 radii, all as returned by the queries.
        """
        n = self._size
        arrays = (self._inputs[:n].copy(), self._labels[:n].copy(), self._radii[:n].copy())
        for arr in arrays:
            arr.flags.writeable = False
        return arrays

    def query(self, x, label: int, radius: float) -> tuple[int, float, bool]:
        """
        Answer one input and memorise it (steps 1-5 of the class docstring).

        :param x: One input of any shape; it is flattened and must match the size of the memorised inputs.
        :param label: Its class from the smoothed classifier (-1 for abstain).
        :param radius: Its certified L2 radius (>= 0, finite).
        :return: ``(label, radius, changed)``: the adjusted answer and whether it differs from the given one
            (``changed`` is True exactly when the conflict set was non-empty).
        """
        for name, value in (("label", label), ("radius", radius)):
            if np.ndim(value) != 0:
                raise ValueError(f"{name} must be a scalar, got {value!r}")
        label, radius = int(_as_labels(label, "label")), float(_as_radii(radius, "radius"))
        rows = _as_rows(np.asarray(x).reshape(1, -1), "x")
        self._check_dim(rows, "x")
        return self._query(rows[0], label, radius)

    def process(self, x, labels, radii, order=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Query the rows of a batch in a given order, continuing the current memory (call :meth:`reset` first for a
        fresh run). Equal to calling :meth:`query` on ``x[order[0]], x[order[1]], ...``. Every argument is checked
        before anything is memorised.

        :param x: Inputs of shape ``(n, ...)``.
        :param labels: ``n`` class labels (-1 for abstain).
        :param radii: ``n`` certified L2 radii (>= 0, finite).
        :param order: A permutation of ``range(n)`` giving the query order; default index order, as the official
            post-processing script.
        :return: ``(labels, radii, changed)`` as int64, float64 and bool arrays in the *original* row positions.
        """
        rows = _as_rows(x, "x")
        n = len(rows)
        labels = _as_labels(labels, "labels")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match x, got {labels.shape}")
        radii = _as_radii(radii, "radii")
        if radii.shape != (n,):
            raise ValueError(f"radii must have shape ({n},) to match x, got {radii.shape}")
        order = self._as_order(order, n)
        if n:
            self._check_dim(rows, "x")
        out_labels, out_radii, changed = labels.copy(), radii.copy(), np.zeros(n, dtype=bool)
        for i in order:
            out_labels[i], out_radii[i], changed[i] = self._query(rows[i], int(labels[i]), float(radii[i]))
        return out_labels, out_radii, changed

    def state_dict(self) -> dict[str, np.ndarray]:
        """
        The memory as plain numpy arrays, so that a long run can be saved and resumed.

        :return: ``{"inputs", "labels", "radii"}``: copies of :attr:`entries` (writeable).
        """
        inputs, labels, radii = self.entries
        return {"inputs": inputs.copy(), "labels": labels.copy(), "radii": radii.copy()}

    def load_state_dict(self, state) -> None:
        """
        Replace the memory by one saved with :meth:`state_dict`. Shapes and values are checked; the invariant
        between entries is not re-checked (that would cost ``O(|M|^2)``), so only load states this class produced.

        :param state: Mapping with ``"inputs"`` (``(n, d)``), ``"labels"`` and ``"radii"`` (``(n,)``).
        """
        missing = {"inputs", "labels", "radii"} - set(state)
        if missing:
            raise ValueError(f"state misses the keys {sorted(missing)}")
        inputs = np.asarray(state["inputs"])
        if inputs.ndim != 2:
            raise ValueError(f"state['inputs'] must have shape (n, d), got {inputs.shape}")
        labels = _as_labels(state["labels"], "state['labels']")
        radii = _as_radii(state["radii"], "state['radii']")
        n = len(inputs)
        if labels.shape != (n,) or radii.shape != (n,):
            raise ValueError(f"state['labels'] and state['radii'] must have shape ({n},) to match state['inputs']")
        self.reset()
        if n:
            rows = _as_rows(inputs, "state['inputs']")
            # Grow once to the final size, then copy in: later appends continue the amortised growth.
            self._grow(n, rows.shape[1])
            self._inputs[:n], self._labels[:n], self._radii[:n] = rows, labels, radii
            self._size = n

    def _query(self, x: np.ndarray, label: int, radius: float) -> tuple[int, float, bool]:
        n = self._size
        changed = False
        if n:
            dist = np.linalg.norm(self._inputs[:n] - x, axis=1)
            conflict = np.flatnonzero((dist < self._radii[:n] + radius) & (self._labels[:n] != label))
            if len(conflict):
                changed = True
                gaps = dist[conflict] - self._radii[conflict]
                j = conflict[np.argmin(gaps)]  # argmin takes the first, i.e. the earliest entry, on ties
                if gaps.min() < 0:
                    label, radius = int(self._labels[j]), float(self._radii[j] - dist[j])
                else:
                    radius = float(gaps.min())
        self._append(x, label, radius)
        return label, radius, changed

    def _append(self, x: np.ndarray, label: int, radius: float) -> None:
        if self._size == len(self._labels):
            self._grow(max(_MIN_CAPACITY, 2 * self._size), len(x))
        self._inputs[self._size], self._labels[self._size], self._radii[self._size] = x, label, radius
        self._size += 1

    def _grow(self, capacity: int, dim: int) -> None:
        inputs = np.empty((capacity, dim), dtype=np.float64)
        labels = np.empty(capacity, dtype=np.int64)
        radii = np.empty(capacity, dtype=np.float64)
        n = self._size
        if n:  # an empty memory has no dimension yet, so its (0, 0) inputs would not broadcast
            inputs[:n], labels[:n], radii[:n] = self._inputs[:n], self._labels[:n], self._radii[:n]
        self._inputs, self._labels, self._radii = inputs, labels, radii

    def _check_dim(self, rows: np.ndarray, name: str) -> None:
        if self._size and rows.shape[1] != self._inputs.shape[1]:
            raise ValueError(f"{name} has {rows.shape[1]} entries per input, the memory holds {self._inputs.shape[1]}")

    @staticmethod
    def _as_order(order, n: int) -> np.ndarray:
        if order is None:
            return np.arange(n)
        arr = np.asarray(order)
        if arr.shape != (n,) or arr.dtype.kind not in "iu" or not np.array_equal(np.sort(arr), np.arange(n)):
            raise ValueError(f"order must be a permutation of range({n}), got {order!r}")
        return arr
