"""
Sequential CERTIFY for the multi-scale cascade (:mod:`art_some.core.cascade`): each level draws its estimation votes
in rounds and stops as soon as its part of the decision is settled, with confidence sequences
(:mod:`art_some.core.sequential`, :mod:`art_some.core.confseq`) in place of fixed-n bounds.

At level k (largest sigma first), after ``n0`` selection draws pick c_A, every look at the cumulative votes updates

- a lower confidence sequence on p_k(x, c_A) (level budget's lower share, as in fixed n): the level *answers* once
  it reaches p0, with radius min(sigma_k [Phi^-1(L) - Phi^-1(p0)], the higher levels' caps);
- (every level but the last) simultaneous upper confidence sequences on every class's p_k(x, c) (Bonferroni over the
  C classes, the upper share): the level *passes* once all of them are below p0, and their running minimum gives the
  cap sigma_k [Phi^-1(p0) - Phi^-1(max_{c != y} U_c)] that a lower level's answer y inherits. An upper sequence on
  p_c is a lower sequence on 1 - p_c, the share of draws that did not vote for c, so the same bounds serve both.

A level stops when its answer's radius is settled (fixed-radius mode: every requested radius certified or out of
reach at n; radius mode: within ``tolerance`` of its reach), when it passes and its cap is settled in the same
sense, when neither answering nor passing can happen by n (abstain), or at n (answer if L >= p0, else pass if every
U_c < p0, else abstain). Only the control flow is this module's; the loop and the bounds are the single-level
procedure's (:func:`~art_some.core.sequential.run_rounds`, :class:`~art_some.core.sequential.SequenceBounds`).

Guarantee: with probability at least 1 - alpha, a returned class is the cascade's output everywhere within the
returned L2 radius. Each level spends alpha / K (the ``"uniform"`` split, the only one here: a sequence's level
must be fixed before its draws, and the ``"sequential"`` split's depends on where the cascade stops) on sequences
that hold at every look at once, so the level where an input stops and when do not enter the guarantee.

| Paper link: https://arxiv.org/abs/2310.16779 (the cascade); https://arxiv.org/abs/2406.17830 (confidence
  sequences for randomized smoothing)
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy.stats import norm

from art_some.core.cascade import _budgets, failure_bound, level_alpha
from art_some.core.certify import CertifyResult
from art_some.core.rules import ABSTAIN, Tally
from art_some.core.sequential import CertifyStops, SequenceBounds, check_bound, draw_schedule, run_rounds
from art_some.core.streams import ESTIMATION, SELECTION

if TYPE_CHECKING:
    from art_some.core.smoothing import Smooth

# z = 0, 0.005, ..., 5: radius mode's thresholds, a radius step of sigma / 200 (as the single level's grid).
Z_GRID = np.arange(0.0, 5.0 + 1e-9, 0.005)

# draw(level, stage, positions, nums, rounds) -> (len(positions), C) counts: ``nums[i]`` draws for the input at
# ``positions[i]`` from level ``level``'s stream ``stage`` (``rounds`` None for selection, else each input's round).
LevelDraw = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def _tested(radii: np.ndarray | None, sigma: float) -> np.ndarray:
    """The radii to test: 0 and the requested ones (fixed-radius mode), or a grid of sigma / 200 (radius mode)."""
    return Z_GRID * sigma if radii is None else np.unique(np.append(0.0, radii))


def margin(sigma: float, p0: float, p: np.ndarray) -> np.ndarray:
    """The radius sigma (Phi^-1(p) - Phi^-1(p0)) that a lower bound ``p`` >= p0 certifies at a level."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return sigma * (norm.ppf(np.clip(p, 0.0, 1.0)) - norm.ppf(p0))


def cap(sigma: float, p0: float, p_bar: np.ndarray) -> np.ndarray:
    """The radius cap sigma (Phi^-1(p0) - Phi^-1(p_bar)) of a passed level (inf where p_bar is 0)."""
    with np.errstate(divide="ignore"):
        return sigma * (norm.ppf(p0) - norm.ppf(np.clip(p_bar, 0.0, 1.0)))


def _nudged(values: np.ndarray, short) -> np.ndarray:
    """``values`` moved up by a few ulps where ``short(values)`` (a formula's inverse that rounding left short)."""
    for _ in range(1000):  # 1 - q near p0 ~ 1 needs as many ulps of q as fit in one ulp of 1 - q
        moving = short(values) & (values < 1.0)
        if not moving.any():
            break
        values = np.where(moving, np.nextafter(values, 2.0), values)
    return values


def answer_thresholds(p0: float, sigma: float, radii: np.ndarray | None) -> np.ndarray:
    """
    Thresholds on p_k(x, c_A): the smallest pA >= p0 whose :func:`margin` reaches each radius r (0 and the requested
    radii, or a grid of sigma / 200), nudged up so that it reaches r exactly despite rounding.
    """
    r = _tested(radii, sigma)
    g = _nudged(norm.cdf(norm.ppf(p0) + r / sigma), lambda g: (g < p0) | (margin(sigma, p0, g) < r))
    return np.unique(g)


def pass_thresholds(p0: float, sigma: float, radii: np.ndarray | None) -> np.ndarray:
    """
    Thresholds on 1 - p_k(x, c): the smallest 1 - p_c with p_c strictly below p0 (the level may pass) whose
    :func:`cap` reaches each radius r (0 and the requested radii, or a grid), nudged up so that both hold exactly.
    """
    r = _tested(radii, sigma)
    q = np.maximum(norm.sf(norm.ppf(p0) - r / sigma), 1.0 - p0)
    q = _nudged(q, lambda q: (1.0 - q >= p0) | (cap(sigma, p0, 1.0 - q) < r))
    return np.unique(q)


def _complement(tally: Tally, num_classes: int) -> Tally:
    """One row per (input, class): the votes for every other class in column 0, for the class in column 1."""
    k = tally.counts.reshape(-1)
    t = np.repeat(np.broadcast_to(np.asarray(tally.draws), (len(tally),)), num_classes)
    return Tally(np.stack([t - k, k], axis=1), t)


def _others_max(upper: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """max over c != classes[i] of upper[i, c]."""
    masked = upper.copy()
    masked[np.arange(len(classes)), classes] = 0.0
    return masked.max(axis=1)


class LevelStops:
    """
    One level's decision after each look (the module docstring's rules): the answer's stops are the single-level
    :class:`~art_some.core.sequential.CertifyStops` at threshold p0 with the caps in the radius; the pass's are
    the upper sequences' and this level's cap, settled below ``ceiling`` (the largest radius a lower level can
    certify at n: a cap above it never binds).
    """

    def __init__(self, answer: CertifyStops, upper: SequenceBounds | None, *, p0: float, sigma: float,
                 num_classes: int, radii, tolerance: float, ceiling: float):
        self.answer, self.upper, self.p0, self.sigma = answer, upper, p0, sigma
        self.num_classes, self.radii, self.tolerance, self.ceiling = num_classes, radii, tolerance, ceiling
        size = len(answer.c_hat)
        self.q_best = np.zeros((size, num_classes))  # running max of the lower bounds on 1 - p_c

    @property
    def upper_bounds(self) -> np.ndarray:
        """``(N, C)``: the simultaneous upper bounds on every class's probability so far."""
        return 1.0 - self.q_best

    def __call__(self, rounds: np.ndarray, active: np.ndarray, tally: Tally) -> np.ndarray:
        reason = self.answer(rounds, active, tally)
        if self.upper is None:  # the last level only answers or abstains
            return reason
        c = self.num_classes
        rows = (active[:, None] * c + np.arange(c)[None, :]).reshape(-1)  # one row per (input, class)
        flat = _complement(tally, c)
        zeros = np.zeros(len(rows), dtype=np.int64)
        looked = self.upper.look(np.repeat(rounds, c), rows, flat, zeros).reshape(-1, c)
        q = self.q_best[active] = np.maximum(self.q_best[active], looked)
        q_reach = np.maximum(q, self.upper.reach(rows, flat, zeros).reshape(-1, c))
        done = np.asarray(tally.draws) >= self.upper.n
        answering = self.answer.best[active] >= self.p0
        passing = (1.0 - q).max(axis=1) < self.p0
        can_pass = (1.0 - q_reach).max(axis=1) < self.p0
        top = tally.counts.argmax(axis=1)  # the likeliest answer below: its cap excludes it
        cap_now = np.minimum(cap(self.sigma, self.p0, _others_max(1.0 - q, top)), self.ceiling)
        cap_reach = np.minimum(cap(self.sigma, self.p0, _others_max(1.0 - q_reach, top)), self.ceiling)
        if self.radii is None:
            settled = cap_now >= (1 - self.tolerance) * cap_reach
        else:
            settled = ((cap_now[:, None] >= self.radii) | (cap_reach[:, None] < self.radii)).all(axis=1)
        out = np.where(answering, reason, "").astype(object)
        out = np.where(~answering & passing & (settled | done), "pass", out)
        hopeless = ~answering & ~passing & ~can_pass & np.isin(reason, ("abstain", "radii"))
        out = np.where(hopeless, reason, out)
        return np.where(~answering & ~passing & done, "max_n", out)


def cascade_certify_sequential(
    draw: LevelDraw,
    levels: Sequence["Smooth"],
    num_inputs: int,
    *,
    n0: int,
    n: int,
    alpha: float,
    p0: float = 0.5,
    radii: np.ndarray | None = None,
    tolerance: float = 0.02,
    start: int = 40,
    growth: float | None = None,
    bound: str | None = None,
    spending: str = "end",
    final_share: float = 0.8,
    futility: float = 0.01,
    pool: int | None = None,
) -> CertifyResult:
    """
    Sequential cascaded CERTIFY (the module docstring's procedure and guarantee). The options are those of
    :func:`~art_some.core.sequential.sequential_certify`, already checked (:meth:`Cascade.certify_sequential
    <art_some.core.smoothing.Cascade.certify_sequential>` checks them; ``radii`` is an array).

    :param draw: The counts of each level's streams (:data:`LevelDraw`).
    :param levels: The levels (Gaussian noise, a rule with one Bernoulli vote per draw), largest sigma first.
    :param num_inputs: N.
    :return: a :class:`CertifyResult` as :func:`~art_some.core.cascade.cascade_certify`'s (the answering or last
             visited level's counts, p_lower and sigma), with ``draws`` (estimation draws over all levels visited),
             ``stopped_by`` (the last level's reason) and, in fixed-radius mode, ``radii`` and ``certified_at``.
    """
    k_levels = len(levels)
    rule0 = levels[0].rule
    bound = check_bound(bound, rule0, radius_mode=radii is None)
    schedule = draw_schedule(n, start, growth, bound)
    num_classes = levels[0].num_classes
    began = time.perf_counter()
    predict = np.full(num_inputs, ABSTAIN, dtype=np.int64)
    radius, p_lower = np.zeros(num_inputs), np.zeros(num_inputs)
    sigmas = [float(level.noise.sigma) for level in levels]
    sigma_used = np.full(num_inputs, sigmas[0])
    level_sigma = np.full(num_inputs, None, dtype=object)
    visited = np.zeros(num_inputs, dtype=np.int64)
    capped = np.zeros(num_inputs, dtype=bool)
    draws = np.zeros(num_inputs, dtype=np.int64)
    stopped = np.full(num_inputs, "", dtype=object)
    counts0_out, counts_out = np.zeros((2, num_inputs, num_classes), dtype=np.int64)
    passed_upper: list[tuple[float, np.ndarray]] = []  # (sigma, (N, C) upper bounds) of each passed level
    options = dict(spending=spending, final_share=final_share, futility=futility)
    active = np.arange(num_inputs)
    for s, level in enumerate(levels):
        if len(active) == 0:
            break
        is_last = s == k_levels - 1
        a_lower, a_upper = _budgets(level_alpha(alpha, s, k_levels, "uniform"), is_last)
        rule, m = level.rule, len(active)
        check_bound(bound, rule, radius_mode=radii is None)
        selection = draw(s, SELECTION, active, np.full(m, int(n0)), None)
        c_hat = rule.select(Tally(selection, int(n0)))
        caps = np.full(m, np.inf)
        for sigma_j, upper_j in passed_upper:
            caps = np.minimum(caps, cap(sigma_j, p0, _others_max(upper_j[active], c_hat)))

        def radius_of(p, local, sigma=sigmas[s], caps=caps):
            return np.where(p >= p0, np.minimum(margin(sigma, p0, p), caps[local]), -1.0)

        thresholds = None if bound == "union-cp" else answer_thresholds(p0, sigmas[s], radii)
        lower = SequenceBounds(rule, bound, a_lower, schedule, thresholds, num_inputs=m, **options)
        answer = CertifyStops(lower, c_hat, radius_of, radii, tolerance)
        upper, ceiling = None, np.inf
        if not is_last:
            thresholds = None if bound == "union-cp" else pass_thresholds(p0, sigmas[s], radii)
            upper = SequenceBounds(rule, bound, a_upper / num_classes, schedule, thresholds,
                                   num_inputs=m * num_classes, **options)
            p_max = (alpha / k_levels) ** (1.0 / n)  # no bound of n draws exceeds the level's Clopper-Pearson
            # 0 when no lower level can certify anything: then any cap is settled at once.
            ceiling = max(0.0, max(float(margin(sigma, p0, p_max)) for sigma in sigmas[s + 1:]))
        stops = LevelStops(answer, upper, p0=p0, sigma=sigmas[s], num_classes=num_classes, radii=radii,
                           tolerance=tolerance, ceiling=ceiling)

        def level_draw(rounds, local, nums, s=s, active=active):
            return Tally(draw(s, ESTIMATION, active[local], nums, rounds), nums)

        counts, _, used, reasons = run_rounds(level_draw, schedule, m, num_classes, stops, pool=pool)
        counts0_out[active], counts_out[active] = selection, counts
        draws[active] += used
        visited[active] += 1
        sigma_used[active] = sigmas[s]
        stopped[active] = reasons
        best = answer.best
        p_lower[active] = best
        r = radius_of(best, np.arange(m))
        answered = (best >= p0) & (r >= 0)
        here = active[answered]
        predict[here], radius[here] = c_hat[answered], r[answered]
        level_sigma[here] = sigmas[s]
        capped[here] = caps[answered] < margin(sigmas[s], p0, best[answered])
        if is_last:
            break
        goes_on = (best < p0) & (reasons == "pass")
        upper_full = np.ones((num_inputs, num_classes))
        upper_full[active] = stops.upper_bounds
        passed_upper.append((sigmas[s], upper_full))
        active = active[goes_on]
    seconds = np.full(num_inputs, (time.perf_counter() - began) / max(1, num_inputs))
    result = CertifyResult(
        predict, radius, p_lower, counts0_out, counts_out, int(n0), int(n), alpha, sigma_used, seconds,
        extra={"level_sigma": level_sigma, "levels_visited": visited, "radius_capped": capped,
               "alpha_split": "uniform", "failure_bound": failure_bound(alpha, k_levels, "uniform"),
               "sequence_bound": bound, "sequence_rounds": len(schedule)},
    )
    result.draws, result.stopped_by = draws, stopped.astype(str)
    if radii is not None:
        result.radii = radii
        result.certified_at = (predict >= 0)[:, None] & (radius[:, None] >= radii[None, :])
    return result


__all__ = ["LevelDraw", "LevelStops", "answer_thresholds", "cap", "cascade_certify_sequential", "margin",
           "pass_thresholds"]
