"""
Cascaded (multi-scale) CERTIFY and PREDICT over K smoothing levels sigma_1 < ... < sigma_K (Jeong & Shin 2023).

Level k is an ordinary smoothed classifier g_k; it *answers* class c when p_k(x, c) > p0 and abstains otherwise.
The cascade asks the largest sigma first and takes the first level that answers. The certificate (the paper's
Theorem, as its code applies it): if level k answers y_hat with p_k(x, y_hat) >= p_lower > p0, and every higher
level k' has an upper bound p_bar_k' >= max_{c != y_hat} p_k'(x, c) below p0, then the cascade says y_hat within

    R = min( sigma_k [Phi^-1(p_lower) - Phi^-1(p0)],  min_{k' > k} sigma_k' [Phi^-1(p0) - Phi^-1(p_bar_k')] ),

because x -> Phi^-1(p_k(x, c)) is (1 / sigma_k)-Lipschitz. With K = 1 and p0 = 1/2 this is Cohen's certificate.

These functions own only the control flow; the bounds are each level's rule's and the radii its noise's
(``margin``), and the counting is a callback into the shared engine, so each level keeps its own fresh selection
and estimation draws.

| Paper link: https://arxiv.org/abs/2310.16779
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from art_some.core.certify import CertifyResult
from art_some.core.rules import ABSTAIN, Tally
from art_some.core.streams import ESTIMATION, PREDICTION, SELECTION
from art_some.core.validate import probability

if TYPE_CHECKING:
    from art_some.core.smoothing import Smooth

ALPHA_SPLITS = ("uniform", "sequential")
PREDICT_RULES = ("cascade", "hybrid")


# count(level, stage, positions, num) -> (len(positions), C) int counts; ``level`` indexes sigmas (largest first).
LevelCounter = Callable[[int, int, np.ndarray, int], np.ndarray]


def level_alpha(alpha: float, stage: int, num_levels: int, alpha_split: str) -> float:
    """
    The failure probability one level may spend when the cascade stops at ``stage`` (0 = the largest sigma).

    ``"uniform"``: alpha / K at every level whatever the stop, so the certificate fails with probability at most
    alpha although the stopping level is chosen by the data (the default). ``"sequential"``: alpha / (s + 1) per
    level when stopping at stage s, the official certify.py's schedule (within a level art-some still splits the
    budget between the lower and upper bounds, so radii are not the official ones); summed over the stages a
    data-chosen stop can reach, its failure probability is only bounded by alpha (1 + 1/2 + ... + 1/K), 1.83 alpha
    for K = 3.
    """
    if alpha_split == "uniform":
        return alpha / num_levels
    if alpha_split == "sequential":
        return alpha / (stage + 1)
    raise ValueError(f"alpha_split must be one of {', '.join(ALPHA_SPLITS)}, got {alpha_split!r}")


def failure_bound(alpha: float, num_levels: int, alpha_split: str) -> float:
    """The proven bound on the probability that a cascaded certificate is wrong under ``alpha_split``."""
    if alpha_split == "uniform":
        return alpha
    return min(1.0, alpha * sum(1.0 / (s + 1) for s in range(num_levels)))


def _budgets(level_budget: float, is_last: bool) -> tuple[float, float]:
    """
    Split a level's budget between the lower bound (used if the cascade stops here) and the simultaneous upper
    bounds (used if it passes on). The lowest level can only stop, so its lower bound gets all of it; this keeps
    K = 1 identical to Cohen's CERTIFY.
    """
    return (level_budget, 0.0) if is_last else (level_budget / 2, level_budget / 2)


def _cap(level: "Smooth", tally: Tally, alpha_upper: float, y_hat: np.ndarray, p0: float) -> np.ndarray:
    """
    The radius cap sigma_k' (Phi^-1(p0) - Phi^-1(p_bar)) of one higher level, p_bar the largest of its simultaneous
    upper bounds (:meth:`~art_some.core.rules.CertificateRule.class_upper_bounds`, used instead of the official
    Goodman intervals, a chi-square approximation that needs its small counts pooled) over the classes != y_hat.
    """
    upper = level.rule.class_upper_bounds(tally, alpha_upper)
    upper[np.arange(len(y_hat)), y_hat] = 0.0
    p_bar = upper.max(axis=1)
    return level.noise.margin(p0, np.clip(p_bar, 1e-300, 1.0))


def cascade_certify(
    count: LevelCounter,
    levels: Sequence["Smooth"],
    num_inputs: int,
    *,
    n0: int,
    n: int,
    alpha: float,
    p0: float = 0.5,
    alpha_split: str = "uniform",
    num_classes: int | None = None,
) -> CertifyResult:
    """
    Cascaded CERTIFY: for each input, visit levels from the largest sigma down with fresh ``n0`` selection and
    ``n`` estimation draws per level, and

    - certify the selected class c_A when its lower bound reaches p0, with the radius capped by the higher
      levels' simultaneous upper bounds on the classes other than c_A (abstain if a cap is negative);
    - pass to the next level when every class's upper bound is below p0 (the level confidently abstains);
    - abstain otherwise (inconclusive), without visiting lower levels; abstain when the last level passes.

    Guarantee: with probability at least ``1 - failure_bound(alpha, K, alpha_split)`` (alpha for the default
    ``"uniform"`` split), a returned class is the cascade's output everywhere within the returned L2 radius.

    :param count: ``count(level, stage, positions, num)``: counts of ``num`` draws for the inputs at
                  ``positions`` at ``levels[level]`` (``stage`` keeps selection and estimation draws apart).
    :param levels: The levels (smoothed classifiers with a Gaussian noise and a rule), largest sigma first.
    :param num_inputs: N.
    :param num_classes: C, so that N = 0 gives empty count matrices (otherwise read from the first counts).
    :return: a :class:`CertifyResult` whose ``sigma``, ``p_lower`` and counts are those of the level that
             answered (or the last one visited); ``extra`` holds ``level_sigma`` (None when abstaining),
             ``levels_visited``, ``radius_capped``, ``alpha_split`` and ``failure_bound``.
    """
    alpha = probability("alpha", alpha)
    sigmas = [float(level.noise.sigma) for level in levels]
    k_levels = len(sigmas)
    start = time.perf_counter()
    predict = np.full(num_inputs, ABSTAIN, dtype=np.int64)
    radius = np.zeros(num_inputs)
    p_lower = np.zeros(num_inputs)
    sigma_used = np.full(num_inputs, sigmas[0])
    level_sigma: list[float | None] = [None] * num_inputs
    visited = np.zeros(num_inputs, dtype=np.int64)
    capped = np.zeros(num_inputs, dtype=bool)
    counts0_out = counts_out = None  # (N, C); allocated once C is known
    if num_classes is not None:
        counts0_out, counts_out = np.zeros((2, num_inputs, num_classes), dtype=np.int64)
    history: list[np.ndarray] = []  # estimation counts per passed level, full N rows
    active = np.arange(num_inputs)
    for s in range(k_levels):
        if len(active) == 0:
            break
        is_last = s == k_levels - 1
        a_lower, a_upper = _budgets(level_alpha(alpha, s, k_levels, alpha_split), is_last)
        counts0 = count(s, SELECTION, active, int(n0))
        counts = count(s, ESTIMATION, active, int(n))
        if counts0_out is None:
            counts0_out = np.zeros((num_inputs, counts.shape[1]), dtype=np.int64)
            counts_out = np.zeros_like(counts0_out)
        counts0_out[active], counts_out[active] = counts0, counts
        visited[active] += 1
        sigma_used[active] = sigmas[s]
        level, tally = levels[s], Tally(counts, int(n))
        c_hat = level.rule.select(Tally(counts0, int(n0)))
        lower = level.rule.lower_bound(tally, c_hat, a_lower)
        p_lower[active] = lower
        stop = lower >= p0
        if stop.any():
            here = active[stop]
            r = level.noise.margin(lower[stop], p0)
            for j in range(s):  # the higher levels this input passed (all of them, by construction)
                cap = _cap(levels[j], Tally(history[j][here], int(n)),
                           _budgets(level_alpha(alpha, s, k_levels, alpha_split), False)[1], c_hat[stop], p0)
                capped[here] |= cap < r
                r = np.minimum(r, cap)
            ok = r >= 0
            predict[here[ok]] = c_hat[stop][ok]
            radius[here[ok]] = r[ok]
            for i in here[ok]:
                level_sigma[i] = sigmas[s]
        if is_last:
            break
        passing = ~stop & (level.rule.class_upper_bounds(tally, a_upper).max(axis=1) < p0)
        full = np.zeros((num_inputs, counts.shape[1]), dtype=np.int64)
        full[active] = counts
        history.append(full)
        active = active[passing]
    seconds = np.full(num_inputs, (time.perf_counter() - start) / max(1, num_inputs))
    return CertifyResult(
        predict, radius, p_lower, counts0_out, counts_out, int(n0), int(n), alpha, sigma_used, seconds,
        extra={
            "level_sigma": np.array(level_sigma, dtype=object),
            "levels_visited": visited,
            "radius_capped": capped,
            "alpha_split": alpha_split,
            "failure_bound": failure_bound(alpha, k_levels, alpha_split),
        },
    )


def cascade_predict(
    count: LevelCounter, levels: Sequence["Smooth"], num_inputs: int, *, n: int, alpha: float, p0: float = 0.5,
    alpha_split: str = "uniform", num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Cascaded PREDICT with a guarantee: from the largest sigma down, ``n`` draws per level; answer the top class
    when its lower bound exceeds p0, pass on when every class's upper bound is below p0, abstain otherwise.
    The top class is chosen from the same draws, so both bounds are simultaneous over the classes.

    Guarantee: a returned class differs from the cascade's output with probability at most ``failure_bound``.

    :return: ``(classes, counts, level)``: -1 for abstain, the counts of the level that answered (or the last one
             visited), and the index of the answering level (-1 when abstaining).
    """
    alpha = probability("alpha", alpha)
    k_levels = len(levels)
    classes = np.full(num_inputs, ABSTAIN, dtype=np.int64)
    answered = np.full(num_inputs, -1, dtype=np.int64)
    counts_out = None if num_classes is None else np.zeros((num_inputs, num_classes), dtype=np.int64)
    active = np.arange(num_inputs)
    for s in range(k_levels):
        if len(active) == 0:
            break
        is_last = s == k_levels - 1
        a_lower, a_upper = _budgets(level_alpha(alpha, s, k_levels, alpha_split), is_last)
        counts = count(s, PREDICTION, active, int(n))
        if counts_out is None:
            counts_out = np.zeros((num_inputs, counts.shape[1]), dtype=np.int64)
        counts_out[active] = counts
        rule, tally = levels[s].rule, Tally(counts, int(n))
        top = counts.argmax(axis=1)
        num_classes = counts.shape[1]
        lower = rule.lower_bound(tally, top, a_lower / num_classes)
        stop = lower > p0
        classes[active[stop]] = top[stop]
        answered[active[stop]] = s
        if is_last:
            break
        active = active[~stop & (rule.class_upper_bounds(tally, a_upper).max(axis=1) < p0)]
    return classes, counts_out, answered


def hybrid_predict(
    count: LevelCounter, num_levels: int, clean_logits: np.ndarray, *, n: int, p0: float = 0.5, weight: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    The official predict_mdds.py: from the largest sigma down, take the first level whose top vote share reaches
    p0 (no statistical test), then label = argmax(clean logits + log((1 - w) votes / n + w / C)); when no level
    reaches p0, label = argmax of the clean logits. Never abstains; carries no guarantee (empirical accuracy).

    :param clean_logits: ``(N, C)`` logits of the classifier on the clean inputs (no noise, no denoiser).
    :return: ``(labels, scores, level)``: the hybrid scores ``(N, C)`` whose argmax is the label, and the index
             of the level used (-1 for the clean fallback).
    """
    num_inputs, num_classes = clean_logits.shape
    scores = np.asarray(clean_logits, dtype=np.float64).copy()
    answered = np.full(num_inputs, -1, dtype=np.int64)
    active = np.arange(num_inputs)
    for s in range(num_levels):
        if len(active) == 0:
            break
        counts = count(s, PREDICTION, active, int(n))
        share = counts / float(n)
        stop = share.max(axis=1) >= p0
        here = active[stop]
        scores[here] += np.log((1.0 - weight) * share[stop] + weight / num_classes)
        answered[here] = s
        active = active[~stop]
    return scores.argmax(axis=1), scores, answered


def cascade_point_estimate(
    count: LevelCounter, num_levels: int, num_inputs: int, *, n: int, p0: float = 0.5, num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    The cascade's rule on estimated probabilities, which never abstains (what attacks are shown): from the largest
    sigma down, the first level whose top class has a vote share of at least p0 answers with it; when none does,
    the smallest sigma's top class (where the cascade would end). No guarantee.

    :return: ``(classes, counts of the answering level, its index)``.
    """
    if num_inputs == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, num_classes), dtype=np.int64), np.zeros(0, dtype=np.int64)
    positions = np.arange(num_inputs)
    stacked = np.stack([count(s, PREDICTION, positions, int(n)) for s in range(num_levels)])  # (K, N, C)
    answers = stacked.max(axis=2) >= p0 * n
    level = np.where(answers.any(axis=0), answers.argmax(axis=0), num_levels - 1)
    counts = stacked[level, positions]
    return counts.argmax(axis=1).astype(np.int64), counts, level.astype(np.int64)
