"""
The bounds of sequential CERTIFY: how a sequence of looks at one input's votes turns into lower bounds on pA that
hold at every look at once (a confidence sequence), so the input may stop whenever its answer is settled.

Three families, chosen by ``bound``:

- ``"union-cp"``: a Clopper-Pearson bound at each round of a schedule fixed in advance, round j at level
  ``alpha_j`` with ``sum alpha_j = alpha`` (the union bound); staged Clopper-Pearson as Horvath et al. (ICLR 2022)
  use it. The spending ``"end"`` gives later rounds more of alpha (:func:`spend`), so inputs that run to n lose less
  radius than with ``alpha / R`` each (``"uniform"``).
- ``"mixture"``: for each threshold g, the one-sided beta-binomial mixture test of H0: pA <= g. With k votes for c_A
  in t draws and the uniform prior restricted to the alternative [g, 1],

      M_t(g) = [ integral_g^1 q^k (1 - q)^(t - k) dq / (1 - g) ] / [ g^k (1 - g)^(t - k) ]
             = B(k + 1, t - k + 1) I^c_g(k + 1, t - k + 1) / ((1 - g) g^k (1 - g)^(t - k)),

  (I^c the upper regularised incomplete beta function), a nonnegative supermartingale under every pA <= g, so by
  Ville's inequality P(M_t(g) >= 1/alpha for some t) <= alpha (Robbins 1970; Howard et al., Ann. Statist. 2021).
- ``"betting"``: for each threshold g, the capital of a gambler who bets that the votes' mean exceeds g
  (Waudby-Smith & Ramdas, JRSS-B 2024, Section 5): K_t(g) = prod_i (1 + lambda_i (X_i - g)) with the bet
  lambda_i fixed before X_i is seen, here by their aGRAPA rule, lambda = (mu - g) / (var + (mu - g)^2) from the
  earlier rounds' mean and variance, clipped to [0, c / g] with c = 3/4. Again a nonnegative supermartingale under
  pA <= g, so Ville's inequality bounds the chance that it ever reaches 1/alpha.

Both test families are turned into lower bounds the same way (:class:`Staircase`): over increasing thresholds
g_1 < g_2 < ..., the bound is the largest g_m whose test, and every lower one's, has rejected by now. If pA <= g_m,
the test at the smallest threshold above pA has rejected, which happens with probability at most alpha at any time;
so the staircase is a confidence sequence whatever the tests' shapes. In fixed-radius mode the thresholds are the
requested radii's, so each radius is tested directly; in radius mode a fine grid.

Guarantee (every bound here): for one input, P(some look's lower bound exceeds pA) <= alpha (for ``union-cp``,
given the schedule fixed in advance). :func:`union_cp_crossing` computes this probability exactly for a union-CP
schedule; the tests check it.

| Paper link: https://arxiv.org/abs/2010.09686 (betting); https://arxiv.org/abs/2406.17830 (confidence sequences
  for randomized smoothing); https://arxiv.org/abs/1810.08240 (mixture boundaries)
"""
from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import betaincc, betaln
from scipy.stats import binom, norm

from art_some.core.stats import clopper_pearson_lower
from art_some.core.validate import probability

BOUNDS = ("union-cp", "mixture", "betting")
SPENDINGS = ("uniform", "end")
BET_CAP = 0.75  # c in lambda <= c / g: a bet never loses more than c of the capital on one vote (WSR's choice)
# Radius mode's thresholds: pA = Phi(z), z = 0, 0.005, ..., 5 (a radius step of sigma / 200 for Gaussian noise).
GRID = norm.cdf(np.arange(0.0, 5.0 + 1e-9, 0.005))


def spend(alpha: float, rounds: int, spending: str = "end") -> np.ndarray:
    """
    The failure probability of each round of a union-CP schedule, summing to ``alpha``.

    ``"uniform"``: ``alpha / R`` each. ``"end"``: the last round gets half of alpha and the others share the other
    half in proportion to their number (1, 2, ..., R - 1): an input that runs to n then pays a factor ``2`` in alpha
    instead of ``R``, while the early rounds, which only need to settle clear-cut inputs, pay more.
    """
    alpha, rounds = probability("alpha", alpha), int(rounds)
    if spending not in SPENDINGS:
        raise ValueError(f"spending must be one of {', '.join(SPENDINGS)}, got {spending!r}")
    if spending == "uniform" or rounds == 1:
        return np.full(rounds, alpha / rounds)
    weights = np.arange(1, rounds, dtype=np.float64)
    return np.append(alpha / 2 * weights / weights.sum(), alpha / 2)


def mixture_log_evidence(k, t, g) -> np.ndarray:
    """
    log M_t(g) of the one-sided beta-binomial mixture test of H0: p <= g (the module docstring's formula), for k
    successes in t draws; broadcast over ``k``, ``t`` and ``g``. 0 at t = 0; -inf where the evidence underflows.
    """
    k = np.asarray(k, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    reachable = g < 1.0  # no evidence can reject pA <= 1
    g = np.where(reachable, g, 0.5)
    with np.errstate(divide="ignore"):
        tail = np.log(betaincc(k + 1.0, t - k + 1.0, g))
        log_m = betaln(k + 1.0, t - k + 1.0) + tail - np.log1p(-g) - k * np.log(g) - (t - k) * np.log1p(-g)
    return np.where(reachable, log_m, -np.inf)


def betting_bet(k, t, g, cap: float = BET_CAP) -> np.ndarray:
    """
    The aGRAPA bet (Waudby-Smith & Ramdas, Section 5.3) on "mean > g" after ``k`` successes in ``t`` earlier draws:
    ``(mu - g) / (var + (mu - g)^2)`` with the regularised mean ``mu = (k + 1/2) / (t + 1)`` and variance
    ``var = (1/4 + sum (X_i - mu)^2) / (t + 1)``, clipped to ``[0, cap / g]``.
    """
    k = np.asarray(k, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    g = np.minimum(g, np.nextafter(1.0, 0.0))  # a threshold of 1 is never rejected: any bet loses there
    mu = (k + 0.5) / (t + 1.0)
    var = (0.25 + k * (1.0 - mu) ** 2 + (t - k) * mu**2) / (t + 1.0)
    gap = mu - g
    return np.clip(gap / (var + gap**2), 0.0, cap / np.asarray(g, dtype=np.float64))


def betting_log_growth(dk, dt, bet, g) -> np.ndarray:
    """The log capital that ``dt`` more votes, ``dk`` of them successes, add at a constant ``bet`` on "mean > g"."""
    with np.errstate(divide="ignore", invalid="ignore"):
        win = np.where(dk > 0, dk * np.log1p(bet * (1.0 - g)), 0.0)
        lose = np.where(dt - dk > 0, (dt - dk) * np.log1p(-bet * g), 0.0)
    return win + lose


class Staircase:
    """
    Lower bounds on pA from one test martingale per threshold (``"mixture"`` or ``"betting"``), checked after each
    round of draws: the largest threshold whose test, and every lower threshold's, has rejected at level alpha.

    Only the length of each input's leading run of rejected thresholds is kept, and a look tests upwards from it
    until the first threshold that holds: a threshold above that one claims nothing yet, so forgetting whether it
    rejected only makes the bound more cautious.

    :param bound: ``"mixture"`` or ``"betting"``.
    :param thresholds: ``(N, G)`` increasing thresholds per input, or ``(G,)`` shared.
    :param num_inputs: N.
    :param alpha: The level of every test (the staircase is a (1 - alpha) confidence sequence).
    :param peek: For tests only: a betting variant that sizes each bet from the votes of the round it bets on (not
                 predictable, so not a supermartingale): the soundness tests show that it breaks the guarantee.
    """

    WINDOW = 32  # thresholds tested per step upwards

    def __init__(self, bound: str, thresholds: np.ndarray, num_inputs: int, alpha: float, *, peek: bool = False):
        if bound not in ("mixture", "betting"):
            raise ValueError(f"a staircase runs 'mixture' or 'betting' tests, got {bound!r}")
        self.bound, self.peek = bound, bool(peek)
        thresholds = np.asarray(thresholds, dtype=np.float64)
        self.thresholds = np.broadcast_to(thresholds, (num_inputs, thresholds.shape[-1]))
        self.log_level = np.log(1.0 / probability("alpha", alpha))
        self.run = np.zeros(num_inputs, dtype=np.int64)  # the leading rejected thresholds, per input
        self.log_capital = np.zeros(self.thresholds.shape) if bound == "betting" else None
        self.successes = np.zeros(num_inputs)  # what the bets have seen
        self.draws = np.zeros(num_inputs)

    def update(self, rows: np.ndarray, successes: np.ndarray, draws) -> np.ndarray:
        """
        Look at the inputs ``rows`` after their cumulative ``successes`` in ``draws``; return their lower bounds now
        (0 where no threshold is settled).
        """
        k = np.asarray(successes, dtype=np.float64)
        t = np.broadcast_to(np.asarray(draws, dtype=np.float64), (len(rows),))
        if self.bound == "betting":
            g = self.thresholds[rows]
            k_before, t_before = self.successes[rows][:, None], self.draws[rows][:, None]
            # The broken variant bets with what it bets on: the round's own votes.
            bet = betting_bet(k[:, None] - k_before, t[:, None] - t_before, g) if self.peek else \
                betting_bet(k_before, t_before, g)
            self.log_capital[rows] += betting_log_growth(k[:, None] - k_before, t[:, None] - t_before, bet, g)
        self.successes[rows], self.draws[rows] = k, t
        self.run[rows] = self._climb(rows, k, t, self.run[rows])
        return self._top(rows, self.run[rows])

    def projected(self, rows: np.ndarray, successes: np.ndarray, draws: int) -> np.ndarray:
        """
        An optimistic guess of the bound at ``draws`` with these cumulative ``successes`` (for the stopping rules
        only): the mixture's exact value then, or the betting capital grown at the current bets.
        """
        k = np.asarray(successes, dtype=np.float64)
        t = np.full(len(rows), float(draws))
        return self._top(rows, self._climb(rows, k, t, self.run[rows], project=True))

    def _climb(self, rows, k, t, run, project: bool = False) -> np.ndarray:
        """Extend each leading run upwards while the tests reject, a window of thresholds at a time."""
        run, size = run.copy(), self.thresholds.shape[1]
        going = np.flatnonzero(run < size)
        while len(going):
            # Past the last threshold the window repeats it: rejecting it again changes nothing.
            span = np.minimum(run[going, None] + np.arange(self.WINDOW)[None, :], size - 1)
            rejects = self._evidence(rows[going], k[going], t[going], span, project) >= self.log_level
            ahead = np.cumprod(rejects, axis=1).sum(axis=1)
            run[going] = np.minimum(run[going] + ahead, size)
            going = going[(ahead == self.WINDOW) & (run[going] < size)]
        return run

    def _evidence(self, rows, k, t, columns, project: bool) -> np.ndarray:
        """log M or log K of the tests at the thresholds ``columns`` (per row) of the inputs ``rows``."""
        g = self.thresholds[rows[:, None], columns]
        if self.bound == "mixture":
            return mixture_log_evidence(k[:, None], t[:, None], g)
        capital = self.log_capital[rows[:, None], columns]
        if not project:
            return capital
        k_before, t_before = self.successes[rows][:, None], self.draws[rows][:, None]
        bet = betting_bet(k_before, t_before, g)
        return capital + betting_log_growth(k[:, None] - k_before, t[:, None] - t_before, bet, g)

    def _top(self, rows, run) -> np.ndarray:
        """The threshold at the top of each run (0 for an empty run)."""
        top = self.thresholds[rows, np.maximum(run - 1, 0)]
        return np.where(run > 0, top, 0.0)


def crossing_probability(p: float, schedule, crosses) -> float:
    """
    The exact probability that a test over a schedule ever rejects, for a binomial count that grows by
    ``Binomial(N_j - N_{j-1}, p)`` per round and a test that rejects at round j on counts
    ``crosses(counts, N_j, j) -> bool`` (per count): dynamic programming over the count, keeping only the paths that
    have not rejected yet.
    """
    alive, crossed, previous = np.array([1.0]), 0.0, 0  # alive[c] = P(count = c and no rejection so far)
    for j, total in enumerate(int(s) for s in schedule):
        step = binom.pmf(np.arange(total - previous + 1), total - previous, p)
        alive = np.clip(fftconvolve(alive, step), 0.0, None) if len(step) > 64 else np.convolve(alive, step)
        over = np.asarray(crosses(np.arange(total + 1), total, j), dtype=bool)
        crossed += alive[over].sum()
        alive[over] = 0.0
        previous = total
    return float(crossed)


def union_cp_crossing(p: float, schedule, alphas) -> float:
    """
    The exact probability that some round's Clopper-Pearson lower bound of a union-CP schedule (round j at level
    ``alphas[j]``) exceeds the true ``p`` (:func:`crossing_probability`). Its guarantee says: at most
    ``sum(alphas)``.
    """
    def crosses(counts, total, j):
        return clopper_pearson_lower(counts, total, alphas[j]) > p

    return crossing_probability(p, schedule, crosses)


__all__ = ["BOUNDS", "GRID", "SPENDINGS", "Staircase", "betting_bet", "betting_log_growth", "crossing_probability",
           "mixture_log_evidence", "spend", "union_cp_crossing"]
