"""The registry of random streams (art_some.core.streams): its key spaces are disjoint, so no two uses share draws."""

import numpy as np
import pytest

from art_some.core import streams


def test_stages_are_distinct_and_cascade_levels_never_meet_another_stage():
    plain = [streams.SELECTION, streams.ESTIMATION, streams.PREDICTION, streams.GRADIENT, streams.TRAINING,
             streams.SIGMA_SEARCH, streams.AUDIT, streams.CHOICE]
    assert len(set(plain)) == len(plain) and max(plain) < streams.LEVEL_STRIDE
    level_stages = {streams.level_stage(s, level): (s, level)
                    for s in (streams.SELECTION, streams.ESTIMATION, streams.PREDICTION, streams.CHOICE)
                    for level in range(50)}
    assert len(level_stages) == 4 * 50  # no two (stage, level) pairs share a stage number
    assert all(streams.level_stage(s, 0) == s for s in plain)  # level 0 is the plain estimator's streams


def test_audit_keys_are_disjoint_from_input_indices_and_from_each_other():
    indices = np.array([0, 1, 7, streams.INDEX_LIMIT - 1])
    runs = {(a, e): streams.attack_run_key(a, e, indices) for a in range(12) for e in (0, 1, streams.AUDIT_BUDGETS - 1)}
    every = np.concatenate(list(runs.values()))
    assert len(np.unique(every)) == len(every)  # no two (attack, budget, input) share a run key
    assert every.min() >= streams.INDEX_LIMIT and every.max() < streams.AUDIT_KEY_BASE
    confirm = streams.audit_key(every)
    assert confirm.min() >= streams.AUDIT_KEY_BASE and len(np.intersect1d(confirm, every)) == 0
    with pytest.raises(ValueError, match="2\\*\\*30"):
        streams.attack_run_key(0, 0, [streams.INDEX_LIMIT])
    with pytest.raises(ValueError, match="budgets"):
        streams.attack_run_key(0, streams.AUDIT_BUDGETS, [0])


def test_training_keys_are_disjoint():
    noise = [streams.training_noise_key(r) for r in range(streams.MAX_RANKS)]
    shuffles = [streams.epoch_shuffle_key(e) for e in range(10_000)]
    keys = noise + [streams.TRAINING_SHUFFLE_KEY, streams.TRAINING_MONITOR_KEY] + shuffles
    assert len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="ranks"):
        streams.training_noise_key(streams.MAX_RANKS)


def test_every_stream_of_the_package_comes_from_the_registry():
    # No module seeds a generator from a stage number of its own: seed_for's stage argument is always a name.
    import pathlib
    import re

    root = pathlib.Path(streams.__file__).parents[1]
    literal = re.compile(r"seed_for\([^,]+,\s*\d")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if literal.search(p.read_text())]
    assert offenders == []
    assert "SELECTION" in streams.__doc__ and "level_stage" in streams.__doc__  # the table is documented


def test_sequential_rounds_draw_fresh_estimation_noise_below_the_audit_keys():
    import pytest

    from art_some.core.streams import INDEX_LIMIT, MAX_ROUNDS, sequential_round_key

    keys = [sequential_round_key(j, np.array([0, INDEX_LIMIT - 1])) for j in (0, 1, MAX_ROUNDS - 1)]
    assert keys[0].tolist() == [0, INDEX_LIMIT - 1]  # round 0 is the input's own ESTIMATION key
    flat = np.concatenate(keys)
    assert len(set(flat.tolist())) == len(flat) and flat.max() < streams.AUDIT_KEY_BASE
    with pytest.raises(ValueError, match="fewer than"):
        sequential_round_key(MAX_ROUNDS, [0])
