"""
Sequential CERTIFY: the estimation draws come in rounds of growing size, and each input stops as soon as its
answer is settled, instead of spending the full n on every input.

After ``n0`` selection draws pick the class c_A (as in CERTIFY), estimation rounds draw until the cumulative counts
reach ``N_1 < N_2 < ... < N_R = n`` (geometric, :func:`draw_schedule`). After round j, the rule's lower bound on pA
(Clopper-Pearson for Cohen's rule, Bernstein for the vote-average rule) at level ``alpha / R`` (the failure
probability spent evenly over the R rounds
that the schedule fixes in advance: :func:`round_alphas`), so by the union bound every round's bound holds at once
with probability at least 1 - alpha: a confidence sequence. The certificate uses the largest bound seen so far.
An input stops when

- **abstain**: even if its remaining draws voted for c_A at the rate of the upper confidence bound on pA, the bound
  at n could not reach 1/2;
- **radii** (fixed-radius mode): every requested radius is decided, certified (the rule's radius for the bound
  already reaches it) or out of reach at n (in the sense above);
- **tolerance** (radius mode): the radius that the remaining draws could at best add is at most ``tolerance`` times
  the radius reachable at n;
- **max_n**: it has used all n draws.

Guarantee (for every rule whose ``lower_bound`` is valid at a fixed number of draws): for each input, the
probability that any claim made about it is wrong (the returned class not the smoothed classifier's prediction
within the returned radius, or "certified at r" for some requested r where it is not) is at most ``alpha``, over all
rounds and radii together: every claim follows from one lower bound of the sequence, and the sequence fails with
probability at most alpha. How and when an input stops does not enter the guarantee, only how many draws it costs.

| Paper link: https://arxiv.org/abs/1902.02918 (CERTIFY); input-specific sample sizes: Chen et al., AAAI 2022;
  confidence sequences for randomized smoothing: https://arxiv.org/abs/2406.17830
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from art_some.core.certify import CertifyResult, check_inputs, record_extra
from art_some.core.noise import check_indices
from art_some.core.rules import Tally
from art_some.core.stats import certifies
from art_some.core.streams import ESTIMATION, MAX_ROUNDS, SELECTION, sequential_round_key
from art_some.core.validate import is_number, positive_int, probability

if TYPE_CHECKING:
    from art_some.core.smoothing import Smooth

# Why each input stopped (the records' ``stopped_by``).
STOP_REASONS = ("abstain", "radii", "tolerance", "max_n")
DEFAULT_START = 100  # draws of the first round: a clear-cut input is decided within a few hundred (see the issue)
DEFAULT_GROWTH = 2.0
DEFAULT_TOLERANCE = 0.02


def draw_schedule(n: int, start: int = DEFAULT_START, growth: float = DEFAULT_GROWTH) -> list[int]:
    """
    The cumulative estimation draws after each round: ``start, start * growth, ...`` (rounded up), cut at and ending
    with ``n``. Fixed before any draw, so the failure probability can be split over its rounds.
    """
    n, start = positive_int("n", n), positive_int("start", start)
    if not is_number(growth) or not np.isfinite(growth) or growth <= 1:
        raise ValueError(f"growth must be a number > 1 (each round draws more than the last), got {growth!r}")
    schedule, size = [], float(start)
    while int(np.ceil(size)) < n:
        step = max(int(np.ceil(size)), schedule[-1] + 1 if schedule else 1)  # at least one more draw per round
        schedule.append(step)
        if len(schedule) >= MAX_ROUNDS:
            raise ValueError(f"start {start} and growth {growth!r} give more than {MAX_ROUNDS} rounds up to n = {n}: "
                             "use a larger start or growth (each round spends a share of alpha)")
        size = max(size * float(growth), step + 1)
    return [*schedule, n]


def round_alphas(alpha: float, rounds: int) -> np.ndarray:
    """
    The failure probability of each round's bound: ``alpha / rounds`` each, so that they sum to alpha (the union
    bound over the rounds is what makes the sequence of bounds hold at once).
    """
    return np.full(int(rounds), float(alpha) / int(rounds))


def sequential_certify(
    smooth: "Smooth",
    x,
    *,
    n0: int,
    n: int,
    alpha: float,
    radii: Sequence[float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    start: int = DEFAULT_START,
    growth: float = DEFAULT_GROWTH,
    indices: Sequence[int] | None = None,
) -> CertifyResult:
    """
    Sequential CERTIFY (see the module docstring for the procedure and its guarantee): radius mode without
    ``radii``, fixed-radius mode with them.

    :param smooth: The smoothed classifier (its rule's bounds and decision; one noise scale, or one per input).
    :param x: Inputs ``(N, *shape)`` in the noise's space.
    :param n0: Selection draws (independent of the estimation draws, as in CERTIFY).
    :param n: The most estimation draws any input gets (the last round ends at n).
    :param alpha: Failure probability per input, over all rounds and radii.
    :param radii: Fixed-radius mode: decide "certified at r" for each r (>= 0); None for radius mode.
    :param tolerance: Radius mode: stop once the remaining draws could add at most this fraction of the radius
                      reachable at n (in [0, 1); 0 stops only to abstain or at n, and even then the bounds are at
                      alpha / R, so radii are a little smaller than fixed-n CERTIFY's).
    :param start: Estimation draws of the first round.
    :param growth: Factor by which the cumulative draws grow per round (> 1).
    :param indices: Global input indices (key the noise; round j draws from its own stream).
    :return: a :class:`~art_some.core.certify.CertifyResult` whose ``draws`` (estimation draws per input),
             ``stopped_by`` and, in fixed-radius mode, ``radii`` and ``certified_at`` ``(N, len(radii))`` say how
             each input was decided.
    """
    import torch

    rule = smooth.rule
    alpha = probability("alpha", alpha)
    positive_int("n0", n0)
    check_inputs(x, "n", n, indices)
    tolerance = check_tolerance(tolerance)
    radii = None if radii is None else check_radii(radii)
    schedule = draw_schedule(n, start, growth)
    alphas = round_alphas(alpha, len(schedule))
    began = time.perf_counter()
    x_len = len(x)
    indices = check_indices(indices, x_len)
    sequential_round_key(len(schedule) - 1, indices)  # refuses indices beyond the key space before any draw
    selection = smooth.counts(x, int(n0), SELECTION, indices=indices, desc="CERTIFY selection")
    c_hat = rule.select(selection)
    counts = np.zeros((x_len, smooth.num_classes), dtype=np.int64)
    squares = np.zeros_like(counts) if rule.needs_squares else None
    best = np.zeros(x_len)  # the largest lower bound so far: every one of the sequence holds at once
    draws = np.zeros(x_len, dtype=np.int64)
    stopped = np.full(x_len, "", dtype=object)
    active = np.arange(x_len)
    previous = 0
    for j, (total, round_alpha) in enumerate(zip(schedule, alphas)):
        if not len(active):
            break
        rows = torch.as_tensor(active, device=x.device) if isinstance(x, torch.Tensor) else active
        now_smooth = smooth.subset(active)
        drawn = now_smooth.counts(x[rows], total - previous, ESTIMATION,
                                  indices=sequential_round_key(j, indices[active]), squares=rule.needs_squares,
                                  desc=f"CERTIFY round {j + 1}/{len(schedule)}")
        counts[active] += drawn.counts
        if squares is not None:
            squares[active] += drawn.squares
        previous = total
        draws[active] = total
        tally = Tally(counts[active], total, None if squares is None else squares[active])
        best[active] = np.maximum(best[active], rule.lower_bound(tally, c_hat[active], round_alpha))
        reach = _reachable(rule, tally, c_hat[active], n, alphas, j, best[active], now_smooth.noise)
        now = np.where(certifies(best[active]), rule.radius(best[active], now_smooth.noise), -np.inf)
        done = np.full(len(active), total >= n)
        reason = np.where(done, "max_n", "").astype(object)
        hopeless = reach < 0  # even the best case at n stays below 1/2
        if radii is None:
            settled = certifies(best[active]) & (np.maximum(now, 0) >= (1 - tolerance) * reach)
            reason = np.where(~done & settled, "tolerance", reason)
        else:
            decided = (now[:, None] >= radii[None, :]) | (reach[:, None] < radii[None, :])
            settled = decided.all(axis=1)
            reason = np.where(~done & settled & ~hopeless, "radii", reason)
        reason = np.where(~done & hopeless, "abstain", reason)
        finished = done | settled | hopeless
        stopped[active[finished]] = reason[finished]
        active = active[~finished]
    predict, radius = rule.decide(c_hat, best, smooth.noise)
    seconds = np.full(x_len, (time.perf_counter() - began) / max(1, x_len))
    result = CertifyResult(predict, radius, best, selection.counts, counts, int(n0), int(n), alpha,
                           smooth.noise.sigma, seconds, squares, extra=record_extra(smooth))
    result.draws, result.stopped_by = draws, stopped.astype(str)
    if radii is not None:
        result.radii = radii
        result.certified_at = certifies(best)[:, None] & (radius[:, None] >= radii[None, :])
    return result


def _reachable(rule, tally: Tally, classes, n, alphas, j, best, noise) -> np.ndarray:
    """
    The largest radius each input could still certify by the end (-1 where even that stays below 1/2), in the
    rule's optimistic projection (:meth:`~art_some.core.rules.CertificateRule.projected_lower_bound`) to the last
    round's bound at n; or what the best bound it already has gives. Only the cost depends on it: a wrong projection
    stops an input too early (fewer certificates) or too late (more draws), never a wrong claim.
    """
    p_final = best
    if tally.draws < n:
        p_final = np.maximum(best, rule.projected_lower_bound(tally, classes, n, alphas[j], alphas[-1]))
    return np.where(certifies(p_final), rule.radius(p_final, noise), -1.0)


def check_radii(radii) -> np.ndarray:
    """Fixed-radius mode's radii: one or more distinct finite numbers >= 0 (a list or array, not a string)."""
    message = f"radii must be a list of one or more distinct finite numbers >= 0, got {radii!r}"
    if isinstance(radii, (str, bytes)) or np.ndim(radii) != 1 or not all(is_number(r) for r in radii):
        raise ValueError(message)
    values = np.asarray(radii, dtype=np.float64)
    if not len(values) or not np.all(np.isfinite(values)) or np.any(values < 0) or len(set(values)) < len(values):
        raise ValueError(message)
    return values


def check_tolerance(tolerance) -> float:
    """Radius mode's tolerance: a number in [0, 1)."""
    if not is_number(tolerance) or not 0 <= float(tolerance) < 1:
        raise ValueError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    return float(tolerance)


__all__ = ["STOP_REASONS", "check_radii", "check_tolerance", "draw_schedule", "round_alphas", "sequential_certify"]
