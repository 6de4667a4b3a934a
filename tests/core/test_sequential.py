"""
Sequential CERTIFY: the schedule, the stopping rules, and soundness tested statistically on exact linear ground truths
(a half-space classifier at signed distance d: pA = Phi(d / sigma), so the true radius is |d|).
"""
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from art_some.core import rules, sequential, smoothing
from art_some.core.confseq import BOUNDS, Staircase
from art_some.core.noise import GaussianNoise
from art_some.core.rules import CohenRule
from art_some.core.sequential import draw_schedule, round_alphas
from art_some.core.smoothing import Smooth

SIGMA = 0.5
ALPHA = 0.1  # large, so that the tests have power
TRIALS = 600  # inputs per distance; each index keys its own noise, so they are independent trials


def half_space(z):
    """Class 1 where the first coordinate is positive: an input at x[0] = d has pA = Phi(d / sigma)."""
    return (z[:, 0] > 0).long()


def run(d, trials=TRIALS, **options):
    x = torch.zeros((trials, 2))
    x[:, 0] = d
    settings = {**dict(n0=20, n=3000, alpha=ALPHA, start=20), **options}
    smooth = Smooth(half_space, GaussianNoise(SIGMA), settings.pop("rule", CohenRule()), num_classes=2,
                    batch_size=20000, seed=11)
    return smooth.certify_sequential(x, **settings)


def allowance(trials, alpha=ALPHA):
    """The most wrong claims a procedure with failure rate <= alpha shows, at a one-sided 0.001 binomial test."""
    return binom.ppf(0.999, trials, alpha)


def wrong_radius_claims(result, d):
    """Claims that are wrong: a certified radius above |d|, or a certified class that is not the true one."""
    truth = 1 if d > 0 else 0
    certified = result.predict >= 0
    return int(np.sum(certified & ((result.predict != truth) | (result.radius > abs(d)))))


def wrong_fixed_radius_claims(result, d):
    """Inputs with at least one wrong "certified at r" (r > |d|, or the wrong class)."""
    truth = 1 if d > 0 else 0
    wrong = result.certified_at & ((result.radii[None, :] > abs(d)) | (result.predict != truth)[:, None])
    return int(np.sum(wrong.any(axis=1)))


def test_the_schedule_grows_geometrically_ends_at_n_and_splits_alpha_over_its_rounds():
    assert draw_schedule(100_000, start=100, growth=2) == [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200,
                                                           100_000]
    # The defaults: 40 draws first, growth 1.5 for union-CP (it pays alpha per look), 1.1 for the anytime bounds.
    assert draw_schedule(100_000)[:4] == [40, 60, 90, 135] and len(draw_schedule(100_000)) == 20
    assert draw_schedule(100_000, bound="mixture")[:4] == [40, 44, 49, 54]
    assert draw_schedule(150, start=100) == [100, 150]
    assert draw_schedule(50, start=100) == [50]
    assert draw_schedule(10, start=2, growth=1.5) == [2, 3, 5, 7, 10]
    # A tiny last round is merged into the one before: 7,785 -> 10,000 is a round, 7,785 -> 8,000 is not.
    assert draw_schedule(10_000)[-2:] == [7785, 10_000] and draw_schedule(8000)[-2:] == [5190, 8000]
    assert round_alphas(0.001, 11).sum() == pytest.approx(0.001)
    assert round_alphas(0.001, 11)[-1] == pytest.approx(0.0005)  # "end": half of alpha on the last round
    np.testing.assert_allclose(round_alphas(0.001, 11, "uniform"), 0.001 / 11)
    with pytest.raises(ValueError, match="growth must be a number > 1"):
        draw_schedule(100, growth=1.0)
    with pytest.raises(ValueError, match="start"):
        draw_schedule(100, start=0)


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("d", [0.1, 0.4, 0.8])
def test_radius_mode_claims_a_radius_above_the_true_one_at_most_alpha_of_the_time(d, bound):
    result = run(d, tolerance=0.02, bound=bound)
    assert wrong_radius_claims(result, d) <= allowance(TRIALS)
    assert (result.draws <= 3000).all() and set(result.stopped_by) <= set(sequential.STOP_REASONS)
    assert (result.predict >= 0).mean() > 0.5  # it does certify (the test is not passed by abstaining)


@pytest.mark.parametrize("bound", BOUNDS)
@pytest.mark.parametrize("d", [0.3, 0.6])
def test_fixed_radius_mode_wrong_certified_at_r_answers_stay_within_alpha_over_all_radii(d, bound):
    # Radii around the true one: those just above |d| are where a wrong "certified" can happen.
    radii = [0.5 * d, 0.9 * d, 1.02 * d, 1.1 * d, 1.3 * d]
    result = run(d, radii=radii, bound=bound)
    assert wrong_fixed_radius_claims(result, d) <= allowance(TRIALS)
    assert result.certified_at[:, 0].mean() > 0.9  # radii well inside are certified
    assert (result.certified_at == ((result.predict >= 0)[:, None]
                                    & (result.radius[:, None] >= np.asarray(radii)[None, :]))).all()


def test_without_alpha_spending_the_same_test_fails(monkeypatch):
    # The broken variant: every round's bound at the full alpha (no union bound over the rounds).
    monkeypatch.setattr(sequential, "round_alphas", lambda alpha, rounds, spending: np.full(rounds, alpha))
    d = 0.3
    radii = [1.02 * d, 1.1 * d]
    broken = run(d, radii=radii, bound="union-cp")
    assert wrong_fixed_radius_claims(broken, d) > allowance(TRIALS)
    assert wrong_radius_claims(run(d, tolerance=0.0, bound="union-cp"), d) > allowance(TRIALS)


def test_a_betting_sequence_that_sizes_its_bets_from_the_votes_it_bets_on_fails_the_same_test(monkeypatch):
    # The broken variant: each round's bet computed from that round's own votes (not predictable).
    monkeypatch.setattr(sequential, "Staircase", lambda *args, **kwargs: Staircase(*args, **{**kwargs, "peek": True}))
    d = 0.3
    broken = run(d, radii=[1.001 * d], bound="betting", final_share=0.0)
    assert wrong_fixed_radius_claims(broken, d) > allowance(TRIALS)
    assert wrong_radius_claims(run(d, tolerance=0.0, bound="betting", final_share=0.0), d) > allowance(TRIALS)


def test_clear_inputs_stop_early_and_a_coin_flip_abstains_early():
    decided = run(2.0, 200, n=100_000, start=100, alpha=0.001, radii=[0.25, 0.5])  # pA = Phi(4)
    assert decided.certified_at.all() and (decided.draws <= 800).all()
    assert set(decided.stopped_by) == {"radii"}
    # Radius mode stops where the rest of the draws could add little: at pA = Phi(0.5), well before n.
    moderate = run(0.25, 200, n=100_000, start=100, alpha=0.001, tolerance=0.05)
    assert np.median(moderate.draws) < 100_000 and (moderate.stopped_by == "tolerance").mean() > 0.5
    assert (moderate.predict == 1).mean() > 0.9 and not (moderate.predict == 0).any()  # n0 = 20 may pick class 0
    # Three classes with probabilities 0.4, 0.3, 0.3: no class can reach 1/2, which shows within a few rounds.
    from scipy.stats import norm

    cuts = SIGMA * norm.ppf([0.4, 0.7])

    def three_way(z):
        return torch.bucketize(z[:, 0].contiguous(), torch.as_tensor(cuts, dtype=z.dtype))

    split = Smooth(three_way, GaussianNoise(SIGMA), CohenRule(), num_classes=3).certify_sequential(
        torch.zeros((200, 2)), n0=100, n=100_000, alpha=0.001)
    assert (split.predict == -1).all() and (split.stopped_by == "abstain").all()
    assert split.draws.max() <= 800


def test_a_radius_out_of_reach_at_n_is_decided_at_once():
    # sigma * Phi^-1(alpha^(1/n)) is the largest radius n draws can certify; beyond it nothing needs drawing.
    result = run(3.0, n=1000, start=100, alpha=0.001, radii=[10.0])
    assert (result.draws == 100).all() and not result.certified_at.any()


def test_the_selection_draws_are_those_of_fixed_n_certify():
    x = torch.zeros((20, 2))
    x[:, 0] = 0.1
    smooth = Smooth(half_space, GaussianNoise(SIGMA), num_classes=2, seed=3)
    fixed = smooth.certify(x, n0=30, n=200, alpha=ALPHA)
    seq = smooth.certify_sequential(x, n0=30, n=200, alpha=ALPHA, start=50)
    np.testing.assert_array_equal(seq.counts_selection, fixed.counts_selection)
    assert (seq.counts_estimation.sum(axis=1) == seq.draws).all()


def test_bad_options_and_non_finite_inputs_are_refused():
    with pytest.raises(ValueError, match=r"tolerance must be a number in \[0, 1\)"):
        run(0.1, tolerance=1.0)
    with pytest.raises(ValueError, match="radii must be"):
        run(0.1, radii=[-1.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        Smooth(half_space, GaussianNoise(SIGMA), num_classes=2).certify_sequential(
            torch.full((2, 2), float("nan")), n0=10, n=100, alpha=ALPHA)


# Every estimator, through its certificate rule -----------------------------------------------------------------------
# Every rule with a lower bound certifies sequentially (Cohen's, scaled, vote-average's Bernstein, DDRS's), and so
# does the cascade, level by level (tests/core/test_cascade_sequential.py).
@pytest.fixture(scope="module")
def estimators(digits):
    from tests.estimators.test_non_finite import _digit_estimators

    (x, _), _ = digits
    return dict(_digit_estimators(x[:200]))


@pytest.mark.parametrize("name", ["smoothed", "some", "smooth_reduce", "smooth_reduce_vote_average", "cascade",
                                  "data_dependent"])
def test_every_estimator_certifies_sequentially(estimators, digits, name):
    _, (x, _) = digits
    clf = estimators[name]
    result = clf.certify_sequential(x[:4], n=400, start=50, indices=[3, 5, 7, 9])
    fixed = clf.certify_detailed(x[:4], n=400, indices=[3, 5, 7, 9])
    np.testing.assert_array_equal(result.counts_selection, fixed.counts_selection)  # the same n0 draws
    visits = result.extra.get("levels_visited", 1)
    assert (result.draws >= 50).all() and (result.draws <= 400 * visits).all()
    votes_per_draw = clf.num_patches if name == "smooth_reduce_vote_average" else 1  # one vote per patch
    if name != "cascade":  # a cascade's counts are the last level's, its draws all levels'
        assert (result.counts_estimation.sum(axis=1) == votes_per_draw * result.draws).all()
    g = clf.smoothing(torch.as_tensor(x[:4]), np.array([3, 5, 7, 9]))
    sure = result.predict >= 0
    if name == "cascade":  # the answering level's margin over p0, or less where a higher level caps it
        sigma = np.array([s if s is not None else np.nan for s in result.extra["level_sigma"]], dtype=float)
        margin = sigma * (norm.ppf(result.p_lower) - norm.ppf(g.p0))
        assert (result.radius[sure] <= margin[sure] + 1e-12).all()
    else:
        np.testing.assert_allclose(result.radius[sure], g.rule.radius(result.p_lower, g.noise)[sure])
    at = clf.certify_at(x[:4], radii=[0.0, 0.1, 0.3], n=400, start=50, indices=[3, 5, 7, 9])
    assert at.shape == (4, 3) and at.dtype == bool
    assert (at[:, 1] <= at[:, 0]).all() and (at[:, 2] <= at[:, 1]).all()  # a larger radius is never easier


def test_certify_at_on_a_linear_model_answers_by_the_exact_radius():
    from tests.conftest import Linear2

    # Logits (0, x0 - 0.3): class 1 beyond x0 = 0.3, so the input x0 = 0.8 has the exact radius 0.5.
    clf = make_linear(Linear2([1.0, 0.0], -0.3))
    x = np.tile(np.array([[0.8, 0.0]], dtype=np.float32), (8, 1))
    at = clf.certify_at(x, radii=[0.1, 0.3, 0.6, 2.0], n=20_000)
    assert at[:, :2].all() and not at[:, 2:].any()


def make_linear(model):
    from tests.conftest import make_classifier

    return make_classifier(model, (2,), 2, sample_size=50, scale=0.25, noise_batch_size=5000, clip_values=None)


# The runner and the command line --------------------------------------------------------------------------------------
def test_the_command_line_certifies_at_radii_and_sequentially_and_says_how_many_draws_it_spent(tmp_path):
    from art_some.runs.records import read_header, read_jsonl
    from tests.runs.test_runner import _checkpoint, _cli

    model = _checkpoint(tmp_path)
    common = ["--model", model, "--n0", 20, "--n", 2000, "--skip", 30, "--device", "cpu"]
    result = _cli("certify", *common, "--radii", "0.1,0.25", "--output", tmp_path / "at.jsonl")
    assert result.exit_code == 0, result.output
    assert "forward passes per input" in result.output and "0.1  0.25" in result.output
    records = read_jsonl(tmp_path / "at.jsonl")
    assert all(set(r["certified_at"]) == {"0.1", "0.25"} and 40 <= r["draws"] <= 2000 for r in records)
    assert {r["sequence_bound"] for r in records} == {"mixture"}  # the fixed-radius mode's default
    assert all(r["certified_at"]["0.1"] == (r["predict"] >= 0 and r["radius"] >= 0.1) for r in records)
    assert {r["stopped_by"] for r in records} <= {"abstain", "radii", "max_n"}
    header = read_header(tmp_path / "at.jsonl")
    assert header["sequential"]["mode"] == "fixed_radius" and header["sequential"]["radii"] == [0.1, 0.25]
    # Another mode on the same file is another run.
    result = _cli("certify", *common, "--sequential", "--output", tmp_path / "at.jsonl")
    assert result.exit_code == 2 and "sequential" in result.output
    result = _cli("certify", *common, "--sequential", "--tolerance", 0.05, "--output", tmp_path / "seq.jsonl")
    assert result.exit_code == 0, result.output
    assert read_header(tmp_path / "seq.jsonl")["sequential"]["tolerance"] == 0.05
    assert all("certified_at" not in r and r["draws"] <= 2000 for r in read_jsonl(tmp_path / "seq.jsonl"))
    assert {r["sequence_bound"] for r in read_jsonl(tmp_path / "seq.jsonl")} == {"union-cp"}  # radius mode's
    result = _cli("certify", *common, "--tolerance", 0.05, "--output", tmp_path / "bad.jsonl")
    assert result.exit_code == 2 and "--tolerance is the radius mode's stopping rule" in result.output
    result = _cli("certify", *common, "--radii", "0.1", "--bound", "union-cp", "--output", tmp_path / "cp.jsonl")
    assert result.exit_code == 0, result.output
    assert read_header(tmp_path / "cp.jsonl")["sequential"]["bound"] == "union-cp"
    assert {r["sequence_bound"] for r in read_jsonl(tmp_path / "cp.jsonl")} == {"union-cp"}
    result = _cli("certify", *common, "--bound", "betting", "--output", tmp_path / "fixed.jsonl")
    assert result.exit_code == 2 and "--bound is sequential CERTIFY's" in result.output
    assert not (tmp_path / "fixed.jsonl").exists()


# What the statistics cannot see: every bound at its share of alpha, and fresh noise in every round -------------------
@pytest.mark.parametrize("spending", ["uniform", "end"])
def test_every_union_cp_bound_of_every_round_is_at_its_spent_alpha(monkeypatch, spending):
    lower, upper = [], []
    monkeypatch.setattr(rules, "clopper_pearson_lower", lambda k, n, a, real=rules.clopper_pearson_lower:
                        lower.append(a) or real(k, n, a))
    monkeypatch.setattr(rules, "clopper_pearson_upper", lambda k, n, a, real=rules.clopper_pearson_upper:
                        upper.append(a) or real(k, n, a))
    for options in ({"tolerance": 0.0}, {"radii": [0.1, 0.5]}):
        lower.clear(), upper.clear()
        run(0.3, 50, n=3000, start=20, bound="union-cp", spending=spending, **options)
        spent = round_alphas(ALPHA, len(draw_schedule(3000, 20)), spending)
        assert lower and set(lower) <= set(spent) and spent[0] in lower
        assert set(upper) == {sequential.DEFAULT_FUTILITY}  # the stopping rules' projection: no claim, no alpha


def test_the_anytime_bounds_keep_their_share_of_alpha_for_one_clopper_pearson_bound_at_n(monkeypatch):
    lower = []
    monkeypatch.setattr(rules, "clopper_pearson_lower", lambda k, n, a, real=rules.clopper_pearson_lower:
                        lower.append((a, int(np.max(n)))) or real(k, n, a))
    run(0.05, 50, n=3000, start=20, tolerance=0.0, bound="mixture", final_share=0.8)  # pA = 0.54: runs to n
    assert {a for a, _ in lower} == {0.8 * ALPHA} and {n for _, n in lower} == {3000}


def test_the_selection_and_every_round_draw_from_streams_of_their_own(monkeypatch):
    calls = []
    real = smoothing.count_votes

    def spy(vote_fn, x, num, noise, *, stage, indices, **kwargs):
        calls.append({(stage, int(k)) for k in indices})
        return real(vote_fn, x, num, noise, stage=stage, indices=indices, **kwargs)

    monkeypatch.setattr(smoothing, "count_votes", spy)
    x = torch.zeros((5, 2))
    x[:, 0] = 0.2
    Smooth(half_space, GaussianNoise(SIGMA), num_classes=2).certify_sequential(
        x, n0=20, n=2000, alpha=ALPHA, start=20, tolerance=0.0, indices=[4, 9, 1, 7, 3])
    assert len(calls) == len(draw_schedule(2000, 20, bound="union-cp")) + 1  # the selection, then one per round
    seen = set()
    for streams in calls:
        assert not streams & seen  # no (stage, key) is drawn from twice
        seen |= streams


def test_schedules_with_too_many_rounds_are_refused_at_once():
    with pytest.raises(ValueError, match="more than 1024 rounds"):
        draw_schedule(10**6, start=1, growth=1 + 1e-9)
    assert draw_schedule(500, start=100, growth=1.0000001) == list(range(100, 501))  # one more draw per round
    with pytest.raises(ValueError, match="radii must be a list"):
        run(0.1, 2, radii="0.5")
    with pytest.raises(ValueError, match="radii must be a list"):
        run(0.1, 2, radii=[0.5, 0.5])
    with pytest.raises(ValueError, match="tolerance must be a number"):
        run(0.1, 2, tolerance="0.1")


def test_a_mistyped_option_leaves_no_file_behind(tmp_path):
    from art_some.data import digits
    from art_some.evaluation import certify_dataset
    from tests.runs.test_runner import _checkpoint, _cli

    model = _checkpoint(tmp_path)
    for bad in (["--radii", "nan"], ["--radii", "0.5", "--sequential"], ["--sequential", "--tolerance", 1.5]):
        result = _cli("certify", "--model", model, "--n", 100, "--device", "cpu", *bad, "--output",
                      tmp_path / "r.jsonl")
        assert result.exit_code == 2 and not (tmp_path / "r.jsonl").exists(), result.output
    clf = make_linear(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)))
    data, _ = digits(split="test")
    with pytest.raises(ValueError, match="tolerance must be a number"):
        certify_dataset(clf, data, [0], tmp_path / "t.jsonl", n=100, sequential={"tolerance": 1.5}, progress=False)
    assert not (tmp_path / "t.jsonl").exists()


def test_a_rule_takes_its_radius_from_the_noise_unless_it_says_otherwise():
    from art_some.core.rules import CertificateRule

    noise = GaussianNoise(SIGMA)
    np.testing.assert_array_equal(CertificateRule().radius(np.array([0.5, 0.9]), noise), noise.radius([0.5, 0.9]))
    assert CohenRule().radius(np.array([0.5, 0.9]), noise)[1] > 0


# Packing: inputs at different rounds share forward batches; nothing they decide depends on it -----------------------
@pytest.mark.parametrize("bound", ["mixture", "union-cp"])
@pytest.mark.parametrize("mode", [{"tolerance": 0.02}, {"radii": [0.1, 0.3]}])
def test_records_are_identical_whatever_the_pool_and_the_batch_size(bound, mode):
    x = torch.zeros((12, 2))
    x[:, 0] = torch.linspace(-0.2, 0.6, 12)  # abstentions, early stops and inputs that run to n
    outcomes = []
    for pool, batch_size in [(None, 5000), (1, 7), (3, 64), (5, 5000)]:
        smooth = Smooth(half_space, GaussianNoise(SIGMA), CohenRule(), num_classes=2, batch_size=batch_size, seed=5)
        outcomes.append(smooth.certify_sequential(x, n0=20, n=2000, alpha=ALPHA, start=20, bound=bound, pool=pool,
                                                  indices=np.arange(100, 112), **mode))
    first = outcomes[0]
    assert len(set(first.stopped_by)) > 1  # the inputs do stop at different times
    for other in outcomes[1:]:
        for field in ("predict", "radius", "p_lower", "draws", "counts_estimation", "stopped_by"):
            np.testing.assert_array_equal(getattr(other, field), getattr(first, field), err_msg=field)


def test_a_packed_call_draws_what_separate_calls_draw():
    from art_some.core.noise import count_votes

    x = torch.zeros((3, 2))
    x[:, 0] = torch.tensor([0.0, 0.3, -0.3])
    options = dict(num_classes=2, batch_size=17, seed=2, stage=1)
    packed = count_votes(half_space, x, np.array([5, 40, 123]), GaussianNoise(SIGMA), indices=[7, 8, 9], **options)
    for i, num in enumerate([5, 40, 123]):
        alone = count_votes(half_space, x[i : i + 1], num, GaussianNoise(SIGMA), indices=[7 + i], **options)
        np.testing.assert_array_equal(packed[i], alone[0])
    assert (packed.sum(axis=1) == [5, 40, 123]).all()
    with pytest.raises(ValueError, match="one per input"):
        count_votes(half_space, x, np.array([5, 40]), GaussianNoise(SIGMA), **options)


@pytest.mark.parametrize("bound", ["mixture", "betting"])
def test_radius_mode_runs_more_inputs_than_its_threshold_grid(bound):
    """The grid of radius mode has 1,001 thresholds; a run of more inputs than that once failed on the 1,002nd."""
    x = torch.zeros(1100, 2)
    x[:, 0] = torch.linspace(-1.0, 1.0, 1100)
    result = Smooth(half_space, GaussianNoise(SIGMA), num_classes=2, batch_size=20_000).certify_sequential(
        x, n0=10, n=200, alpha=ALPHA, bound=bound)
    sure = result.predict >= 0
    d = x[:, 0].numpy()
    wrong = (result.predict[sure] != (d[sure] > 0)) | (result.radius[sure] > np.abs(d[sure]))
    assert sure[-100:].all() and sure[:100].all()  # far from the boundary every input is certified
    assert wrong.mean() <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / sure.sum())  # at most alpha per input
