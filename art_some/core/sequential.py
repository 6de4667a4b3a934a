"""
Sequential CERTIFY: the estimation draws come in rounds of growing size, and each input stops as soon as its
answer is settled, instead of spending the full n on every input.

After ``n0`` selection draws pick the class c_A (as in CERTIFY), estimation rounds draw until the cumulative counts
reach ``N_1 < N_2 < ... < N_R = n`` (geometric from ``start``, :func:`draw_schedule`). After each round the votes
for c_A so far give a lower bound on pA from a confidence sequence (:mod:`art_some.core.confseq`), chosen by
``bound``:

- ``"mixture"`` (the default in fixed-radius mode) or ``"betting"``: an anytime-valid bound (a one-sided
  beta-binomial mixture test, or a betting test, per threshold) at ``alpha * (1 - final_share)``, plus, for an input
  that runs to n, one Clopper-Pearson bound at n at ``alpha * final_share``: clear-cut inputs stop on the first,
  inputs near a threshold lose little against fixed n on the second;
- ``"union-cp"``: the rule's own fixed-n bound (Clopper-Pearson for Cohen's rule, Bernstein for the vote-average
  rule) at each round, with alpha spent over the rounds by ``spending`` (staged Clopper-Pearson, Horvath et al.,
  ICLR 2022). Every rule has this one; it is the default in radius mode.

The certificate uses the largest bound seen so far. An input stops when

- **abstain**: even if its remaining draws voted for c_A at the rate of an upper confidence bound on pA at level
  ``futility`` (a power loss, not a failure probability: stopping claims nothing), the bound at n would stay below
  1/2, as the bound itself projects it;
- **radii** (fixed-radius mode): every requested radius is decided, certified or out of reach at n in that sense;
- **tolerance** (radius mode): the radius that the remaining draws could at best add is at most ``tolerance`` times
  the radius reachable at n;
- **max_n**: it has used all n draws.

Guarantee (for every rule, given its bounds): for each input, the probability that any claim made about it is wrong
(the returned class not the smoothed classifier's prediction within the returned radius, or "certified at r" for
some requested r where it is not) is at most ``alpha``, over all rounds and radii together: every claim follows from
one lower bound of the sequence, and the sequence fails with probability at most alpha. How and when an input stops
does not enter the guarantee, only how many draws it costs.

| Paper link: https://arxiv.org/abs/1902.02918 (CERTIFY); input-specific sample sizes: Chen et al., AAAI 2022;
  staged Clopper-Pearson: Horvath et al., ICLR 2022; confidence sequences for randomized smoothing:
  https://arxiv.org/abs/2406.17830; betting: https://arxiv.org/abs/2010.09686
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from art_some.core.certify import CertifyResult, check_inputs, record_extra
from art_some.core.confseq import BOUNDS, GRID, SPENDINGS, Staircase, spend  # noqa: F401 (BOUNDS: the choices)
from art_some.core.noise import check_indices
from art_some.core.rules import Tally
from art_some.core.stats import certifies
from art_some.core.streams import ESTIMATION, MAX_ROUNDS, SELECTION, sequential_round_key
from art_some.core.validate import is_number, positive_int, probability

if TYPE_CHECKING:
    from art_some.core.smoothing import Smooth

# Why each input stopped (the records' ``stopped_by``).
STOP_REASONS = ("abstain", "radii", "tolerance", "max_n")
DEFAULT_START = 40  # draws of the first round: 40-50 all-correct votes settle a clear-cut input at alpha 0.001
DEFAULT_GROWTH = None  # the bound's own (GROWTH)
# Union-CP pays alpha for every look, so it looks rarely; the anytime bounds look often at no cost.
GROWTH = {"union-cp": 1.5, "mixture": 1.1, "betting": 1.1}
DEFAULT_TOLERANCE = 0.02
DEFAULT_BOUND = None  # fixed-radius mode: the rule's first ("mixture" for Bernoulli votes); radius mode: "union-cp"
DEFAULT_SPENDING = "end"
DEFAULT_FINAL_SHARE = 0.8  # of alpha, kept for one Clopper-Pearson bound at n (mixture and betting)
DEFAULT_FUTILITY = 0.01  # the power an early abstention or "out of reach" may cost


def draw_schedule(n: int, start: int = DEFAULT_START, growth: float | None = DEFAULT_GROWTH,
                  bound: str = "union-cp") -> list[int]:
    """
    The cumulative estimation draws after each round: ``start, start * growth, ...`` (rounded up), ending with
    ``n``; a last round smaller than half the one before is merged into it. Fixed before any draw, so the failure
    probability can be split over its rounds. ``growth`` None takes the ``bound``'s (:data:`GROWTH`).
    """
    n, start = positive_int("n", n), positive_int("start", start)
    growth = GROWTH[bound] if growth is None else growth
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
    if len(schedule) >= 2 and n - schedule[-1] < (schedule[-1] - schedule[-2]) / 2:
        schedule.pop()  # a tiny last round costs a look (and, for union-CP, a share of alpha) for little
    return [*schedule, n]


def round_alphas(alpha: float, rounds: int, spending: str = DEFAULT_SPENDING) -> np.ndarray:
    """The failure probability of each round of a union-CP schedule (:func:`art_some.core.confseq.spend`)."""
    return spend(alpha, rounds, spending)


class SequenceBounds:
    """
    The lower bounds of one sequential CERTIFY run for N inputs: what each look at a round's tally lets it claim,
    and the optimistic projection to n that the stopping rules use.

    :param rule: The certificate rule (its fixed-n bounds; ``sequence_bounds`` says which families it supports).
    :param bound: One of :data:`~art_some.core.confseq.BOUNDS`.
    :param alpha: Failure probability per input.
    :param schedule: The cumulative draws per round.
    :param thresholds: ``(N, G)`` increasing thresholds on pA per input, or ``(G,)`` shared, that the tests of
                       ``"mixture"``/``"betting"`` check (:func:`thresholds_for`; None for ``"union-cp"``).
    :param num_inputs: N (the rows that :meth:`look` and :meth:`reach` may name).
    :param spending: How ``"union-cp"`` spends alpha over the rounds.
    :param final_share: The share of alpha kept for the Clopper-Pearson bound at n (``"mixture"``/``"betting"``).
    :param futility: The level of the upper bound that the projections assume the remaining votes at.
    :param peek: For tests only: the broken betting variant (:class:`~art_some.core.confseq.Staircase`).
    """

    def __init__(self, rule, bound: str, alpha: float, schedule: Sequence[int], thresholds: np.ndarray | None, *,
                 num_inputs: int, spending: str = DEFAULT_SPENDING, final_share: float = DEFAULT_FINAL_SHARE,
                 futility: float = DEFAULT_FUTILITY, peek: bool = False):
        self.rule, self.bound, self.schedule, self.futility = rule, bound, list(schedule), futility
        self.n = self.schedule[-1]
        if bound == "union-cp":
            self.alphas = round_alphas(alpha, len(self.schedule), spending)
            self.final_alpha, self.staircase = None, None
        else:
            self.alphas = None
            self.final_alpha = alpha * final_share if final_share > 0 else None
            self.staircase = Staircase(bound, thresholds, num_inputs, alpha * (1 - final_share), peek=peek)

    def look(self, rounds: np.ndarray, rows: np.ndarray, tally: Tally, classes: np.ndarray) -> np.ndarray:
        """The lower bounds on pA that the cumulative ``tally`` of the inputs ``rows``, each after its round, gives."""
        bound = np.zeros(len(rows))
        if self.staircase is None:
            for j in np.unique(rounds):  # union-CP: each round at its own share of alpha
                at = np.flatnonzero(rounds == j)
                bound[at] = self.rule.lower_bound(tally.rows(at), classes[at], self.alphas[j])
            return bound
        bound = self.staircase.update(rows, self.rule.successes(tally, classes), tally.draws)
        last = np.flatnonzero(np.broadcast_to(tally.draws, (len(rows),)) >= self.n)
        if self.final_alpha is not None and len(last):
            final = self.rule.lower_bound(tally.rows(last), classes[last], self.final_alpha)
            bound[last] = np.maximum(bound[last], final)
        return bound

    def reach(self, rows: np.ndarray, tally: Tally, classes: np.ndarray) -> np.ndarray:
        """
        An optimistic guess of the bound at n: the remaining draws voting for ``classes`` at the rate of the upper
        bound at level ``futility``, bounded as the last look would bound them. No claim rests on it.
        """
        if self.staircase is None:
            return self.rule.projected_lower_bound(tally, classes, self.n, self.futility, self.alphas[-1])
        k = self.rule.successes(tally, classes)
        p_upper = self.rule.upper_bound(tally, classes, self.futility)
        k_final = np.minimum(self.n, np.ceil(k + p_upper * (self.n - tally.draws)))
        bound = self.staircase.projected(rows, k_final, self.n)
        if self.final_alpha is not None:
            final = self.rule.projected_lower_bound(tally, classes, self.n, self.futility, self.final_alpha)
            bound = np.maximum(bound, final)
        return bound


def thresholds_for(rule, noise, radii: np.ndarray | None, num_inputs: int) -> np.ndarray:
    """
    The thresholds on pA that the tests check: in fixed-radius mode, per input, the smallest pA whose radius (the
    rule's, for that input's noise) reaches each requested radius, in increasing order (1 where none does); in
    radius mode the shared grid :data:`~art_some.core.confseq.GRID`.
    """
    if radii is None:
        return GRID
    out = np.stack([rule.threshold(r, noise, num_inputs) for r in np.sort(radii)], axis=1)
    return np.maximum.accumulate(out, axis=1)


def check_bound(bound: str | None, rule, radius_mode: bool = False) -> str:
    """
    The sequential bound: one of :data:`~art_some.core.confseq.BOUNDS` that ``rule`` supports. None takes the
    default the digits benchmark chose (``docs/sequential.rst``): in fixed-radius mode the rule's first
    (``"mixture"`` for one Bernoulli vote per draw), which decides radii in the fewest draws; in radius mode
    ``"union-cp"``, whose last round holds half of alpha and so keeps the most radius.
    """
    if bound is None:
        return "union-cp" if radius_mode and "union-cp" in rule.sequence_bounds else rule.sequence_bounds[0]
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    if bound not in rule.sequence_bounds:
        raise ValueError(f"{type(rule).__name__} supports bound={' or '.join(map(repr, rule.sequence_bounds))} only "
                         f"(its votes are not one Bernoulli draw each), not {bound!r}")
    return bound


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
    growth: float | None = DEFAULT_GROWTH,
    bound: str | None = DEFAULT_BOUND,
    spending: str = DEFAULT_SPENDING,
    final_share: float = DEFAULT_FINAL_SHARE,
    futility: float = DEFAULT_FUTILITY,
    pool: int | None = None,
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
                      reachable at n (in [0, 1); 0 stops only to abstain or at n).
    :param start: Estimation draws of the first round.
    :param growth: Factor by which the cumulative draws grow per round (> 1; None: the bound's, :data:`GROWTH`).
    :param bound: ``"mixture"``, ``"betting"`` or ``"union-cp"`` (see the module docstring); None: the default of
                  the mode (:func:`check_bound`).
    :param spending: ``"end"`` or ``"uniform"``: how union-CP spends alpha over the rounds.
    :param final_share: Mixture and betting: the share of alpha kept for the Clopper-Pearson bound at n, in [0, 1).
    :param futility: The level in (0, 1) of the upper bound behind the abstain and out-of-reach stops.
    :param pool: The most inputs in flight at once, packed into the same forward batches at different rounds (None:
                 all, round by round). Results do not depend on it, only how full the batches are.
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
    bound = check_bound(bound, rule, radius_mode=radii is None)
    check_sequence_options(spending, final_share, futility)
    pool = None if pool is None else positive_int("pool", pool)
    schedule = draw_schedule(n, start, growth, bound)
    began = time.perf_counter()
    x_len = len(x)
    indices = check_indices(indices, x_len)
    sequential_round_key(len(schedule) - 1, indices)  # refuses indices beyond the key space before any draw
    thresholds = None if bound == "union-cp" else thresholds_for(rule, smooth.noise, radii, x_len)
    bounds = SequenceBounds(rule, bound, alpha, schedule, thresholds, num_inputs=x_len,
                            spending=spending, final_share=final_share, futility=futility)
    selection = smooth.counts(x, int(n0), SELECTION, indices=indices, desc="CERTIFY selection")
    c_hat = rule.select(selection)

    def draw(rounds: np.ndarray, active: np.ndarray, nums: np.ndarray) -> Tally:
        rows = torch.as_tensor(active, device=x.device) if isinstance(x, torch.Tensor) else active
        return smooth.subset(active).counts(x[rows], nums, ESTIMATION, squares=rule.needs_squares,
                                            indices=sequential_round_key(rounds, indices[active]),
                                            desc=f"CERTIFY rounds {rounds.min() + 1}-{rounds.max() + 1}")

    def radius_of(p: np.ndarray, active: np.ndarray) -> np.ndarray:
        return np.where(certifies(p), rule.radius(p, smooth.subset(active).noise), -1.0)

    stops = CertifyStops(bounds, c_hat, radius_of, radii, tolerance)
    counts, squares, draws, stopped = run_rounds(draw, schedule, x_len, smooth.num_classes, stops,
                                                 squares=rule.needs_squares, pool=pool)
    best = stops.best
    predict, radius = rule.decide(c_hat, best, smooth.noise)
    seconds = np.full(x_len, (time.perf_counter() - began) / max(1, x_len))
    result = CertifyResult(predict, radius, best, selection.counts, counts, int(n0), int(n), alpha,
                           smooth.noise.sigma, seconds, squares, extra=record_extra(smooth))
    result.draws, result.stopped_by = draws, stopped.astype(str)
    result.extra.update(sequence_bound=bound, sequence_rounds=len(schedule))
    if radii is not None:
        result.radii = radii
        result.certified_at = certifies(best)[:, None] & (radius[:, None] >= radii[None, :])
    return result


class CertifyStops:
    """
    Sequential CERTIFY's decision after each look at an input (the module docstring's stopping rules): keeps the
    best lower bound so far per input and says which inputs stop, and why.

    :param bounds: The run's :class:`SequenceBounds`.
    :param c_hat: The selected class per input.
    :param radius_of: ``radius_of(p, active) -> radius``: the radius a lower bound ``p`` on pA certifies for the
                      inputs ``active``, negative where it certifies nothing.
    :param radii: Fixed-radius mode's checked radii, or None.
    :param tolerance: Radius mode's checked tolerance.
    """

    def __init__(self, bounds: SequenceBounds, c_hat: np.ndarray, radius_of, radii, tolerance: float):
        self.bounds, self.c_hat, self.radius_of = bounds, c_hat, radius_of
        self.radii, self.tolerance = radii, tolerance
        self.best = np.zeros(len(c_hat))  # the largest lower bound so far: every one of the sequence holds at once

    def __call__(self, rounds: np.ndarray, active: np.ndarray, tally: Tally) -> np.ndarray:
        """The stop reason of each input of ``active`` after this look at its cumulative ``tally`` ('': go on)."""
        bounds, classes = self.bounds, self.c_hat[active]
        best = self.best[active] = np.maximum(self.best[active], bounds.look(rounds, active, tally, classes))
        done = np.asarray(tally.draws) >= bounds.n
        p_reach = np.where(done, best, np.maximum(best, bounds.reach(active, tally, classes)))
        reach = self.radius_of(p_reach, active)
        now = self.radius_of(best, active)
        reason = np.where(done, "max_n", "").astype(object)
        hopeless = reach < 0  # even the best case at n certifies nothing
        if self.radii is None:
            settled = (now >= 0) & (now >= (1 - self.tolerance) * reach)
            reason = np.where(~done & settled, "tolerance", reason)
        else:
            decided = (now[:, None] >= self.radii[None, :]) | (reach[:, None] < self.radii[None, :])
            settled = decided.all(axis=1)
            reason = np.where(~done & settled & ~hopeless, "radii", reason)
        return np.where(~done & hopeless, "abstain", reason)


def run_rounds(draw, schedule: Sequence[int], num_inputs: int, num_classes: int, stops, *,
               squares: bool = False, pool: int | None = None):
    """
    The rounds of sequential CERTIFY over the estimation draws: the one loop of every sequential procedure, apart
    from where the draws come from (the engine's keyed streams; binomial counts in the simulations of
    ``benchmarks/``) and what each look decides (``stops``).

    Inputs are packed: a pool of at most ``pool`` inputs is in flight, each at its own round, and every step draws
    the next round of every input in the pool in one call; an input that stops frees its place for the next one
    waiting. What an input draws and decides depends only on its own rounds, never on the pool's other inputs.

    :param draw: ``draw(rounds, active, nums) -> Tally``: ``nums[i]`` more draws of round ``rounds[i]`` for each
                 input of ``active``.
    :param schedule: The cumulative draws after each round (the last is n).
    :param num_inputs: N.
    :param num_classes: C.
    :param stops: ``stops(rounds, active, tally) -> reasons``: after each look at the cumulative ``tally`` of the
                  inputs ``active`` (each after its round ``rounds[i]``), why each stops ('' to go on); every input
                  must stop at its last round (e.g. :class:`CertifyStops`).
    :param squares: Accumulate the sums of squared tallies too (rules with ``needs_squares``).
    :param pool: The most inputs in flight at once (None: all of them, round by round).
    :return: ``(counts, squares, draws, stopped_by)`` per input.
    """
    increments = np.diff([0, *schedule])
    counts = np.zeros((num_inputs, num_classes), dtype=np.int64)
    squared = np.zeros_like(counts) if squares else None
    draws = np.zeros(num_inputs, dtype=np.int64)
    rounds = np.zeros(num_inputs, dtype=np.int64)  # each input's next round
    stopped = np.full(num_inputs, "", dtype=object)
    waiting, active = np.arange(num_inputs), np.zeros(0, dtype=np.int64)
    capacity = num_inputs if pool is None else positive_int("pool", pool)
    while len(active) or len(waiting):
        active, waiting = np.concatenate([active, waiting[: capacity - len(active)]]), waiting[capacity - len(active):]
        nums = increments[rounds[active]]
        drawn = draw(rounds[active], active, nums)
        counts[active] += drawn.counts
        if squared is not None:
            squared[active] += drawn.squares
        draws[active] += nums
        tally = Tally(counts[active], draws[active], None if squared is None else squared[active])
        reason = np.asarray(stops(rounds[active], active, tally), dtype=object)
        if (reason[rounds[active] == len(schedule) - 1] == "").any():
            raise RuntimeError("an input went on after its last round: the stopping rules must stop it at n")
        finished = reason != ""
        stopped[active[finished]] = reason[finished]
        rounds[active] += 1
        active = active[~finished]
    return counts, squared, draws, stopped


def check_sequence_options(spending: str, final_share: float, futility: float) -> None:
    """The bound's options: a known spending, a final share in [0, 1), a futility level in (0, 1)."""
    if spending not in SPENDINGS:
        raise ValueError(f"spending must be one of {', '.join(SPENDINGS)}, got {spending!r}")
    if not is_number(final_share) or not 0 <= float(final_share) < 1:
        raise ValueError(f"final_share must be a number in [0, 1), got {final_share!r}")
    probability("futility", futility)


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


__all__ = ["DEFAULT_BOUND", "STOP_REASONS", "CertifyStops", "SequenceBounds", "check_bound", "check_radii",
           "check_sequence_options", "check_tolerance", "draw_schedule", "round_alphas", "run_rounds",
           "sequential_certify", "thresholds_for"]
