"""The streaming vote counter: invariances, agreement with a plain reference loop, and input checks."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from art_some.core.noise import ESTIMATION, SELECTION, GaussianNoise, block_size, count_votes, seed_for
from art_some.core.rules import CohenRule, Tally
from art_some.core.smoothing import Smooth

C = 5


def make_vote(seed=0, d=12):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, C, generator=g)

    def vote(z):
        return (z.flatten(1) @ w).argmax(dim=1)

    return vote


def reference_counts(vote, x, num, sigma, seed, stage, indices):
    """Straightforward loop: each input's draws come from its own generator in blocks, as documented."""
    out = np.zeros((len(x), C), dtype=np.int64)
    block = block_size(num, int(np.prod(x.shape[1:])))
    for row, (xi, idx) in enumerate(zip(torch.as_tensor(x), indices)):
        g = torch.Generator().manual_seed(seed_for(seed, stage, idx))
        blocks, have = [], 0
        while have < num:
            blocks.append(torch.randn((block, *xi.shape), generator=g))
            have += block
        eps = torch.cat(blocks)[:num]
        for j in range(num):
            out[row, int(vote((xi + sigma * eps[j])[None])[0])] += 1
    return out


@pytest.fixture
def inputs():
    return torch.from_numpy(np.random.default_rng(0).normal(size=(6, 3, 2, 2)).astype(np.float32))


def test_counts_sum_to_num_and_match_reference_loop(inputs):
    vote = make_vote()
    counts = count_votes(vote, inputs, 37, GaussianNoise(0.5), num_classes=C, batch_size=16, seed=3,
                         stage=ESTIMATION)
    assert counts.shape == (6, C) and np.all(counts.sum(axis=1) == 37)
    expected = reference_counts(vote, inputs, 37, 0.5, 3, ESTIMATION, range(6))
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("num", [1, 50, 3001])
def test_counts_do_not_depend_on_batch_size(inputs, num):
    vote = make_vote()
    results = [
        count_votes(vote, inputs, num, GaussianNoise(0.3), num_classes=C, batch_size=b, seed=1, stage=SELECTION)
        for b in (1, 7, 64, 5000)
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(results[0], r)


def test_counts_do_not_depend_on_sharding(inputs):
    vote, noise = make_vote(), GaussianNoise(0.4)
    kw = dict(num_classes=C, batch_size=100, seed=9, stage=ESTIMATION)
    whole = count_votes(vote, inputs, 500, noise, **kw)
    shards = [count_votes(vote, inputs[i::3], 500, noise, indices=list(range(6))[i::3], **kw) for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(whole[i::3], shards[i])


def test_stages_and_seeds_give_independent_streams(inputs):
    vote, noise = make_vote(), GaussianNoise(2.0)
    kw = dict(num_classes=C, batch_size=100)
    a = count_votes(vote, inputs, 400, noise, seed=0, stage=SELECTION, **kw)
    b = count_votes(vote, inputs, 400, noise, seed=0, stage=ESTIMATION, **kw)
    c = count_votes(vote, inputs, 400, noise, seed=1, stage=SELECTION, **kw)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def batch_size_spy():
    """A vote function that records the size of every batch it is given."""
    seen, vote = [], make_vote()

    def spy(z):
        seen.append(len(z))
        return vote(z)

    return spy, seen


def test_forward_batches_never_exceed_batch_size(inputs):
    spy, seen = batch_size_spy()
    count_votes(spy, inputs[:2], 10_000, GaussianNoise(0.5), num_classes=C, batch_size=256, seed=0, stage=0)
    assert max(seen) <= 256 and sum(seen) == 20_000


def test_small_n_packs_several_inputs_per_batch(inputs):
    spy, seen = batch_size_spy()
    count_votes(spy, inputs, 10, GaussianNoise(0.5), num_classes=C, batch_size=1000, seed=0, stage=0)
    assert seen == [60]


def test_vote_function_output_is_checked(inputs):
    noise = GaussianNoise(0.5)
    with pytest.raises(ValueError, match="class indices"):
        count_votes(lambda z: torch.zeros(len(z), C), inputs, 4, noise, num_classes=C, batch_size=8, seed=0, stage=0)
    with pytest.raises(ValueError, match="outside"):
        count_votes(lambda z: torch.full((len(z),), C), inputs, 4, noise, num_classes=C, batch_size=8, seed=0,
                    stage=0)


@pytest.mark.parametrize("sigma", [0, -1, float("nan")])
def test_bad_sigma_is_rejected(sigma):
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(sigma)


def test_certify_and_predict_check_their_arguments(inputs):
    smooth = Smooth(make_vote(), GaussianNoise(0.5), num_classes=C)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(inputs, n0=0, n=10, alpha=0.01)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(inputs, n0=10, n=10, alpha=1.0)
    bad = inputs.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        smooth.predict(bad, n=10, alpha=0.01)


def test_cohen_rule_abstains_below_one_half():
    sel = np.array([[10, 0], [0, 10]])
    est = np.array([[60, 40], [5, 995]])
    pred, radius, p_lower = CohenRule().certify(Tally(sel, 10), Tally(est, 1000), 0.001, GaussianNoise(1.0))
    assert pred[0] == -1 and radius[0] == 0.0 and p_lower[0] < 0.5
    assert pred[1] == 1 and radius[1] > 0


def test_per_input_sigma():
    noise = GaussianNoise([0.5, 1.0])
    x = torch.zeros(2, 3)
    eps = torch.ones(2, 3)
    z = noise.perturb(x, eps, torch.tensor([0, 1]))
    assert torch.allclose(z, torch.tensor([[0.5] * 3, [1.0] * 3]))


@settings(max_examples=25, deadline=None)
@given(num=st.integers(1, 300), batch_size=st.integers(1, 400), n_inputs=st.integers(1, 4))
def test_property_counts_invariant_to_batching(num, batch_size, n_inputs):
    x = torch.from_numpy(np.random.default_rng(n_inputs).normal(size=(n_inputs, 12)).astype(np.float32))
    vote, noise = make_vote(), GaussianNoise(1.0)
    a = count_votes(vote, x, num, noise, num_classes=C, batch_size=batch_size, seed=2, stage=ESTIMATION)
    b = count_votes(vote, x, num, noise, num_classes=C, batch_size=10_000, seed=2, stage=ESTIMATION)
    np.testing.assert_array_equal(a, b)
    assert np.all(a.sum(axis=1) == num)


def test_long_calls_show_a_progress_bar_when_asked_and_short_ones_stay_quiet(capsys):
    import time

    def slow_vote(z):
        time.sleep(0.3)
        return torch.zeros(len(z), dtype=torch.long)

    x = torch.zeros((2, 3))
    count_votes(slow_vote, x, 10, GaussianNoise(0.5), num_classes=C, batch_size=4, seed=0, stage=ESTIMATION,
                verbose=True, desc="CERTIFY estimation")
    assert "CERTIFY estimation" in capsys.readouterr().err
    count_votes(slow_vote, x, 10, GaussianNoise(0.5), num_classes=C, batch_size=4, seed=0, stage=ESTIMATION,
                verbose=False, desc="CERTIFY estimation")
    count_votes(make_vote(), x.view(2, 3, 1, 1).expand(2, 3, 2, 2), 10, GaussianNoise(0.5), num_classes=C,
                batch_size=4, seed=0, stage=ESTIMATION, verbose=True)  # under a second: no bar
    assert capsys.readouterr().err == ""
