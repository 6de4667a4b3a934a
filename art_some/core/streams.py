"""
Every random stream of art-some, on one screen.

A stream is a generator seeded from ``seed_for(seed, stage, key)`` (:func:`art_some.core.noise.seed_for`): the
*stage* says what the draws are for, the *key* whom they belong to (an input's index, an attack run, a rank).
Two draws are independent exactly when their (stage, key) pairs differ, and reproducible because nothing else
enters: not the batch size, not the other inputs of a call, not the number of processes.

=============================  =====================================  ==================================
stage                          key                                    draws
=============================  =====================================  ==================================
``SELECTION`` (0)              input index                            CERTIFY's n0 selection draws
``ESTIMATION`` (1)             input index                            CERTIFY's n estimation draws
``ESTIMATION`` (1)             :func:`sequential_round_key`           sequential CERTIFY's round j draws
``PREDICTION`` (2)             input index, or an audit key           PREDICT; the audit's confirmations
``GRADIENT`` (3)               gradient stream (one per attack run)   EOT noise of the smoothed gradients
``TRAINING`` (4)               ``2 * rank``; 1; ``1000 + epoch``      training noise; array shuffling;
                                                                      ``art-some train``'s loader shuffle
``TRAINING`` (4)               3                                      ``art-some train``'s per-epoch accuracy
                                                                      under noise (the same draws each epoch)
``SIGMA_SEARCH`` (5)           input index                            DDRS's test-time sigma ascent
``AUDIT`` (6)                  attack run                             numpy's global seed for ART's attacks
``CHOICE`` (7)                 input index, or an audit key           the cascade audit's level choice
``level_stage(s, l)``          as stage s                             stage s at level l >= 1 of a cascade
=============================  =====================================  ==================================

Key spaces: input indices lie in ``[0, INDEX_LIMIT)``; round j of sequential CERTIFY draws its estimation noise
under ``j * INDEX_LIMIT + index`` (round 0 is the input's plain ESTIMATION key; stage ESTIMATION has no other
keys); an attack run of the audit (attack ``a``, budget ``e``, input ``index``) has the key :func:`attack_run_key`
in ``[INDEX_LIMIT, AUDIT_KEY_BASE)`` for its gradient and numpy streams, and confirms its point with fresh draws
under :func:`audit_key` ``>= AUDIT_KEY_BASE``; levels of a cascade add ``LEVEL_STRIDE`` per level to the stage, so
level 0 is a plain smoothed classifier's streams.
``tests/test_streams.py`` checks that these spaces are disjoint within the documented limits.
"""
from __future__ import annotations

import numpy as np

SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
GRADIENT = 3
TRAINING = 4
SIGMA_SEARCH = 5
AUDIT = 6
CHOICE = 7
# A cascade's level l uses stage s + LEVEL_STRIDE * l: above every stage of one level, so levels never share draws.
LEVEL_STRIDE = 8

INDEX_LIMIT = 2**30  # input indices (data sets far larger than any benchmark's)
AUDIT_KEY_BASE = 2**40
AUDIT_BUDGETS = 64  # budgets per attack that the audit keys leave room for

# TRAINING's keys.
TRAINING_SHUFFLE_KEY = 1
TRAINING_MONITOR_KEY = 3  # odd, below EPOCH_SHUFFLE_BASE: never a rank's noise key (2 * rank) nor a shuffle's
EPOCH_SHUFFLE_BASE = 1000
MAX_RANKS = 500  # training noise keys 2 * rank stay below EPOCH_SHUFFLE_BASE


def level_stage(stage: int, level: int) -> int:
    """The stage of ``stage``'s draws at level ``level`` of a cascade (0 = the largest sigma: the plain stage)."""
    return int(stage) + LEVEL_STRIDE * int(level)


def attack_run_key(attack: int, budget: int, index) -> np.ndarray:
    """
    The key of one attack run (attack number ``attack``, budget number ``budget``, input ``index``): it keys the
    run's GRADIENT and AUDIT streams, and, offset by ``AUDIT_KEY_BASE`` (:func:`audit_key`), its confirmation.
    """
    index = np.asarray(index, dtype=np.int64)
    if np.any(index < 0) or np.any(index >= INDEX_LIMIT) or not 0 <= budget < AUDIT_BUDGETS:
        raise ValueError(f"audit keys need input indices in [0, 2**30) and fewer than {AUDIT_BUDGETS} budgets")
    return (int(attack) * AUDIT_BUDGETS + int(budget) + 1) * INDEX_LIMIT + index


MAX_ROUNDS = AUDIT_KEY_BASE // INDEX_LIMIT  # rounds of sequential CERTIFY that keys leave room for


def sequential_round_key(round_number, index) -> np.ndarray:
    """
    The ESTIMATION key of round ``round_number`` (from 0; one for all, or one per input) of sequential CERTIFY for
    inputs ``index``.
    """
    index = np.asarray(index, dtype=np.int64)
    rounds = np.asarray(round_number, dtype=np.int64)
    if np.any(index < 0) or np.any(index >= INDEX_LIMIT) or np.any(rounds < 0) or np.any(rounds >= MAX_ROUNDS):
        raise ValueError(f"sequential certification needs input indices in [0, 2**30) and fewer than {MAX_ROUNDS} "
                         "rounds")
    return rounds * INDEX_LIMIT + index


def audit_key(run_key) -> np.ndarray:
    """The PREDICTION (and CHOICE) key that confirms an attack point with fresh draws, from its run key."""
    return AUDIT_KEY_BASE + np.asarray(run_key, dtype=np.int64)


def training_noise_key(rank: int) -> int:
    """The key of training rank ``rank``'s noise (ranks never share noise)."""
    if not 0 <= rank < MAX_RANKS:
        raise ValueError(f"training supports ranks 0..{MAX_RANKS - 1}, got {rank}")
    return 2 * int(rank)


def epoch_shuffle_key(epoch: int) -> int:
    """The key of ``art-some train``'s loader shuffle in epoch ``epoch`` (counted from 0)."""
    return EPOCH_SHUFFLE_BASE + int(epoch)
