"""
No vote, count, prediction or certificate from a non-finite input or output (issue 14's reliability review), and
the estimator-level checks that came with it: each case the review broke, as a test.
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from art_some import (
    DataDependentSmoothedClassifier,
    DenoisedMultiScaleClassifier,
    MultiHeadSmoothedClassifier,
    SmoothReduceClassifier,
)
from art_some.core.errors import NonFiniteError
from art_some.core.noise import ESTIMATION, INVALID, GaussianNoise, argmax_votes, count_votes
from art_some.core.smoothing import Smooth
from art_some.models import DigitsCNN, create_model
from tests.conftest import Linear2, make_classifier

LOSS = torch.nn.CrossEntropyLoss()


def _digit_estimators(reference):
    """One of each estimator around randomly initialised digits models (what the review broke them with)."""
    torch.manual_seed(0)
    common = dict(device_type="cpu", clip_values=(0.0, 1.0), sample_size=20, scale=0.25, noise_batch_size=500)
    yield "smoothed", make_classifier(DigitsCNN(), (1, 8, 8), 10, **{k: v for k, v in common.items()
                                                                   if k not in ("device_type", "clip_values")})
    yield "some", MultiHeadSmoothedClassifier(create_model("some_digits_cnn", num_heads=3), LOSS, (1, 8, 8), 10,
                                              **common)
    yield "smooth_reduce", SmoothReduceClassifier(
        DigitsCNN(), LOSS, (1, 8, 8), 10, resize=10, patches={"layout": "grid", "size": 8, "stride": 1}, **common)
    yield "smooth_reduce_vote_average", SmoothReduceClassifier(
        DigitsCNN(), LOSS, (1, 8, 8), 10, resize=10, patches={"layout": "grid", "size": 8, "stride": 2},
        certificate="vote_average", **common)
    cascade_common = {k: v for k, v in common.items() if k != "scale"}
    yield "cascade", DenoisedMultiScaleClassifier(DigitsCNN(), None, (1, 8, 8), 10, denoiser="identity",
                                                  sigmas=(0.25, 0.5), **cascade_common)
    yield "cascade_hybrid", DenoisedMultiScaleClassifier(DigitsCNN(), None, (1, 8, 8), 10, denoiser="identity",
                                                         sigmas=(0.25, 0.5), predict_rule="hybrid", **cascade_common)
    yield "data_dependent", DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, reference=reference,
                                                            rate=0.01, **common)


@pytest.fixture(scope="module")
def estimators(digits):
    (x, _), _ = digits
    return dict(_digit_estimators(x[:200]))


@pytest.fixture(scope="module")
def x_bad(digits):
    _, (x, _) = digits
    x = x[:5].copy()
    x[1, 0, 3, 3] = np.nan
    x[3, 0, 0, 0] = np.inf
    return x


ALL = ["smoothed", "some", "smooth_reduce", "smooth_reduce_vote_average", "cascade", "cascade_hybrid",
       "data_dependent"]


# Vote functions and the engine --------------------------------------------------------------------------------------
def test_argmax_votes_marks_non_finite_rows():
    scores = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [float("inf"), 0.0], [2.0, 1.0]])
    assert argmax_votes(scores).tolist() == [1, INVALID, INVALID, 0]


def test_engine_raises_naming_the_inputs_whose_outputs_are_not_finite():
    x = torch.zeros((4, 3))
    x[2] = 1e30  # finite input, but the vote function overflows on it

    def vote(z):
        return argmax_votes(torch.stack([z.sum(1), -z.sum(1)], dim=1) * 1e30)

    with pytest.raises(NonFiniteError, match=r"input\(s\) 12 ") as err:
        count_votes(vote, x, 10, GaussianNoise(0.1), num_classes=2, batch_size=7, seed=0, stage=ESTIMATION,
                    indices=[10, 11, 12, 13])
    assert err.value.indices == [12]


def test_engine_marks_instead_of_raising_when_asked_and_other_counts_are_unchanged():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    w = torch.tensor([1.0, -1.0, 0.5])

    def vote(z):
        logits = torch.stack([z @ w, -(z @ w)], dim=1)
        logits[z[:, 0] > 50] = float("nan")
        return argmax_votes(logits)

    x_bad = x.clone()
    x_bad[3, 0] = 100.0
    invalid = np.zeros(5, dtype=bool)
    kw = dict(num_classes=2, batch_size=4, seed=1, stage=ESTIMATION)
    marked = count_votes(vote, x_bad, 30, GaussianNoise(0.5), invalid=invalid, **kw)
    clean = count_votes(vote, x, 30, GaussianNoise(0.5), **kw)
    assert invalid.tolist() == [False, False, False, True, False]
    assert marked[3].tolist() == [0, 0]
    np.testing.assert_array_equal(np.delete(marked, 3, axis=0), np.delete(clean, 3, axis=0))


def test_tally_votes_mark_a_row_of_invalid():
    def vote(z):
        tallies = torch.ones((len(z), 3), dtype=torch.long)
        tallies[z[:, 0] > 5] = INVALID
        return tallies

    x = torch.tensor([[0.0], [10.0]])
    with pytest.raises(NonFiniteError, match=r"input\(s\) 1 "):
        count_votes(vote, x, 5, GaussianNoise(0.1), num_classes=3, batch_size=3, seed=0, stage=ESTIMATION)


def test_engine_certify_and_predict_refuse_non_finite_inputs_by_index():
    def vote(z):
        return argmax_votes(torch.stack([z.sum(1), -z.sum(1)], dim=1))

    x = torch.zeros((3, 2))
    x[1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"input\(s\) 8 \(by index\)"):
        Smooth(vote, GaussianNoise(0.5), num_classes=2).certify(x, n0=5, n=10, alpha=0.01, indices=[7, 8, 9])
    with pytest.raises(NonFiniteError, match=r"input\(s\) 1;"):
        Smooth(vote, GaussianNoise(0.5), num_classes=2).predict(x, n=10, alpha=0.01)


# Every estimator: predict gives NaN rows, the rest raise --------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_predict_gives_nan_rows_for_non_finite_inputs_and_the_others_are_unchanged(estimators, x_bad, name):
    est = estimators[name]
    clean = np.delete(x_bad, [1, 3], axis=0)
    with pytest.warns(RuntimeWarning, match="2 of 5 inputs"):
        scores = est.predict(x_bad)
    assert np.isnan(scores[[1, 3]]).all()
    assert np.isfinite(np.delete(scores, [1, 3], axis=0)).all()
    # The finite rows are what predict gives on them alone, at the same positions (noise is keyed by index).
    invalid = np.zeros(5, dtype=bool)
    classes, _ = est.predict_classes(x_bad, invalid=invalid)
    assert invalid.tolist() == [False, True, False, True, False] and classes[1] == classes[3] == -1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = est.predict(clean)
    if name != "data_dependent":  # its kNN sigma depends only on the input, so positions matter only for noise
        np.testing.assert_array_equal(alone[0], scores[0])


@pytest.mark.parametrize("name", ALL)
def test_counts_classes_and_certificates_refuse_non_finite_inputs(estimators, x_bad, name):
    est = estimators[name]
    with pytest.raises(NonFiniteError, match=r"1 and 3"):
        est.predict_classes(x_bad)
    if not name.startswith("cascade_hybrid"):
        with pytest.raises(NonFiniteError, match=r"1 and 3"):
            est.predict_counts(x_bad)
    with pytest.raises(NonFiniteError, match=r"input\(s\) 1 and 3"):
        est.certify(x_bad, n=20)


def test_a_float_overflow_in_the_model_is_no_certificate(digits):
    _, (x, _) = digits
    torch.manual_seed(0)
    model = DigitsCNN()
    with torch.no_grad():
        model.features[0].weight.mul_(1000)  # trained weights are larger than initial ones: make x * 1e38 overflow
    est = make_classifier(model, (1, 8, 8), 10, scale=0.25, sample_size=20)
    with pytest.warns(UserWarning, match="far outside clip_values"):
        with pytest.raises(NonFiniteError, match="NaN or infinite on noisy copies"):
            est.certify(x[:2] * 1e38, n=20)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(est.predict(x[:2] * 1e38)).all()


@pytest.mark.parametrize("name", ["smoothed", "cascade", "smooth_reduce"])
def test_nan_weights_certify_nothing(digits, name):
    _, (x, _) = digits
    est = dict(_digit_estimators(x[:50]))[name]
    with torch.no_grad():
        next(est.model.parameters()).view(-1)[:4] = float("nan")
    with pytest.raises(NonFiniteError):
        est.certify(x[:3], n=20)
    with pytest.warns(RuntimeWarning, match="3 of 3"):
        assert np.isnan(est.predict(x[:3])).all()


def test_cascade_hybrid_refuses_non_finite_clean_logits(digits):
    _, (x, _) = digits
    est = dict(_digit_estimators(x[:50]))["cascade_hybrid"]
    with torch.no_grad():
        next(est.model.parameters()).view(-1)[:4] = float("nan")
    with pytest.raises(NonFiniteError):
        est.predict_classes(x[:2])


# ART's Square-L2 attack against every estimator ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_square_l2_attack_returns_finite_examples_against_every_estimator(estimators, digits, name):
    from art.attacks.evasion import SquareAttack

    _, (x, y) = digits
    est = estimators[name]
    est.predict_abstains = False
    try:
        attack = SquareAttack(est, norm=2, eps=1.0, max_iter=5, nb_restarts=1, verbose=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x_adv = attack.generate(x[:4], y=y[:4])
    finally:
        est.predict_abstains = True
    assert np.isfinite(x_adv).all()


# Parameters --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0, 1, 2, -0.1, float("nan"), True])
def test_set_params_refuses_an_alpha_that_voids_the_guarantee_and_keeps_the_old_one(alpha):
    clf = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, alpha=0.001)
    with pytest.raises(ValueError, match="alpha"):
        clf.set_params(alpha=alpha)
    assert clf.alpha == 0.001


@pytest.mark.parametrize("params,name", [({"sample_size": 0}, "sample_size"), ({"scale": -1.0}, "scale"),
                                         ({"noise_batch_size": 1.5}, "noise_batch_size"), ({"seed": -3}, "seed")])
def test_set_params_checks_the_other_smoothing_settings(params, name):
    clf = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, sample_size=10)
    before = clf.get_params()
    with pytest.raises(ValueError, match=name):
        clf.set_params(**params)
    assert clf.get_params()[name] == before[name]


def test_data_dependent_set_params_scale_is_used(digits):
    (x, _), (x_test, _) = digits
    dd = DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, reference=x[:100], rate=0.01,
                                         device_type="cpu", scale=0.25)
    x_t = torch.from_numpy(x_test[:3])
    before = dd.sigma_of(x_t)
    dd.set_params(scale=0.5)
    np.testing.assert_allclose(dd.sigma_of(x_t), 2 * before, rtol=1e-12)
    assert dd.certify_detailed(x_test[:1], n=20).sigma[0] == pytest.approx(2 * before[0])


def test_data_dependent_sigma_search_presets(digits):
    (x, _), _ = digits
    kw = dict(sigma_rule="optimize", certificate="fixed_sigma", device_type="cpu")
    ancer = DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, **kw)
    ddrs = DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, sigma_search="ddrs", **kw)
    mixed = DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, sigma_search="ddrs", sigma_steps=7,
                                            **kw)
    assert (ancer.sigma_lr, ancer.sigma_steps, ancer.sigma_samples, ancer.prob_clamp) == (0.04, 900, 100,
                                                                                          (0.001, 0.999))
    assert (ddrs.sigma_lr, ddrs.sigma_steps, ddrs.sigma_samples, ddrs.prob_clamp) == (1e-4, 100, 1, (0.02, 0.98))
    assert mixed.sigma_steps == 7 and mixed.sigma_lr == 1e-4
    with pytest.raises(ValueError, match="sigma_search must be one of"):
        DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, sigma_search="paper", **kw)


def test_fixed_sigma_certificate_from_a_script_top_level_warns_and_works():
    script = """
import warnings
import numpy as np, torch
from art_some import DataDependentSmoothedClassifier
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
dd = DataDependentSmoothedClassifier(model, torch.nn.CrossEntropyLoss(), (4,), 2, device_type="cpu",
                                     sigma_rule=lambda x: torch.full((len(x),), 0.5), certificate="fixed_sigma")
result = dd.certify_detailed(np.zeros((2, 4), np.float32), n=20)
print("records", len(result))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "records 2" in done.stdout and "UnsoundCertificateWarning" in done.stderr
    assert "<string>:8" in done.stderr  # the warning points at the user's line


def test_data_dependent_nan_input_names_the_input_not_sigma(digits):
    (x, _), (x_test, _) = digits
    dd = DataDependentSmoothedClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, reference=x[:100], device_type="cpu")
    bad = x_test[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"x contains NaN or infinite values in input\(s\) 0"):
        dd.certify(bad, n=10)


def test_paper_rule_with_a_resize_says_its_radii_are_in_the_resized_space():
    with pytest.warns(UserWarning):
        clf = SmoothReduceClassifier(DigitsCNN(), LOSS, (1, 8, 8), 10, device_type="cpu", scale=0.25, resize=10,
                                     patches={"layout": "grid", "size": 8, "stride": 1}, noise_mode="independent",
                                     unsound_paper_radius=True)
    assert clf.radius_space == "resized" and clf.certificate_info()["radius_space"] == "resized"
    assert clf.radius_divisor == 1.0


# The cascade's answer for attacks ------------------------------------------------------------------------------------
class LevelCode(torch.nn.Module):
    """A 'denoiser' that writes its sigma and the noisy first pixel into an image the classifier below decodes."""

    def forward(self, z, sigma):
        out = torch.zeros_like(z)
        out[:, 0, 0, 0] = sigma
        out[:, 0, 0, 1] = torch.as_tensor(norm.cdf((z[:, 0, 0, 0] / sigma).cpu().numpy()), dtype=z.dtype)
        return out


class LevelClassifier(torch.nn.Module):
    """sigma 1: uniform over 10 classes; sigma 0.5: 3 or 4 (45% each) or 5; sigma 0.25: always 7."""

    def forward(self, x):
        sigma, u = x[:, 0, 0, 0], x[:, 0, 0, 1]
        cls = torch.where(sigma > 0.75, (u * 10).long().clamp(0, 9),
                          torch.where(sigma > 0.3, torch.where(u < 0.45, 3, torch.where(u < 0.9, 4, 5)),
                                      torch.full_like(u, 7).long()))
        return 10.0 * torch.nn.functional.one_hot(cls, 10).float()


def test_cascade_without_abstention_answers_with_its_own_rule_not_the_last_level():
    est = DenoisedMultiScaleClassifier(LevelClassifier(), None, (1, 8, 8), 10, denoiser=LevelCode(),
                                       sigmas=(0.25, 0.5, 1.0), device_type="cpu", sample_size=400,
                                       clip_values=(0.0, 1.0))
    x = np.zeros((3, 1, 8, 8), np.float32)
    classes, _, sigma = est.predict_levels(x)
    assert (classes == -1).all()  # level 1 confidently abstains, level 0.5 is inconclusive
    classes, _, sigma = est.predict_levels(x, abstain=False)
    assert classes.tolist() == [7, 7, 7] and sigma.tolist() == [0.25] * 3
    est.predict_abstains = False
    assert est.predict(x).argmax(axis=1).tolist() == [7, 7, 7]


# Modules -----------------------------------------------------------------------------------------------------------
def test_the_audit_module_is_a_module_and_still_callable():
    import types

    import art_some
    import art_some.evaluation.audit as audit_module
    from art_some.evaluation import audit

    assert isinstance(audit_module, types.ModuleType) and callable(audit_module.audit)
    assert audit is audit_module and callable(audit)
    assert art_some.certify.__name__ == "certify" and art_some.predict.__name__ == "predict"
    from art_some.estimators.factory import create_estimator

    assert art_some.create_estimator is create_estimator


# Clear errors ------------------------------------------------------------------------------------------------------
@pytest.fixture
def clf():
    return make_classifier(DigitsCNN(), (1, 8, 8), 10, scale=0.25, sample_size=10)


@pytest.mark.parametrize("y,match", [(np.array([0, 10]), r"0\.\.9"), (np.array([-1, 2]), r"0\.\.9"),
                                     (np.array([0.5, 1.0]), "non-integral"), (np.array([True, False]), "integer")])
def test_gradient_paths_refuse_bad_labels(clf, y, match):
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=match):
        clf.loss_gradient(x, y)
    with pytest.raises(ValueError, match=match):
        clf.compute_loss(x, y)


def test_gradient_paths_refuse_wrong_shapes(clf):
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        clf.loss_gradient(np.zeros((2, 64), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"x must have shape"):
        clf.class_gradient(np.zeros((2, 1, 8, 9), np.float32))


def test_nb_classes_that_does_not_match_the_model_is_named():
    clf = make_classifier(DigitsCNN(num_classes=10), (1, 8, 8), 4, scale=0.25, sample_size=10)
    with pytest.raises(ValueError, match="nb_classes is 4"):
        clf.loss_gradient(np.zeros((1, 1, 8, 8), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="nb_classes is 4"):
        clf.certify(np.zeros((1, 1, 8, 8), np.float32), n=10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_model_in_another_precision_is_refused_with_the_fix(dtype):
    with pytest.raises(ValueError, match=r"model.float\(\)"):
        make_classifier(DigitsCNN().to(dtype), (1, 8, 8), 10)


def test_uint8_images_and_values_far_outside_clip_values_warn(clf):
    with pytest.warns(UserWarning, match="x / 255"):
        clf.predict(np.full((1, 1, 8, 8), 200, np.uint8))
    with pytest.warns(UserWarning, match="far outside clip_values"):
        clf.certify(np.full((1, 1, 8, 8), 50.0, np.float32), n=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(np.full((1, 1, 8, 8), 0.5, np.float32))


@pytest.mark.parametrize("kwargs,match", [({"batch_size": 0}, "batch_size"), ({"n": True}, "n must be"),
                                          ({"n": 2.5}, "n must be"), ({"indices": [-1]}, "non-negative"),
                                          ({"indices": [0, 1]}, "one index per input")])
def test_bad_certify_arguments_are_named(clf, kwargs, match):
    kwargs = {"n": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        clf.certify(np.zeros((1, 1, 8, 8), np.float32), **kwargs)


def test_an_empty_batch_gives_empty_results(clf):
    empty = np.zeros((0, 1, 8, 8), np.float32)
    prediction, radius = clf.certify(empty, n=10)
    assert prediction.shape == radius.shape == (0,)
    assert clf.predict(empty).shape == (0, 10)


@pytest.mark.parametrize("x", [np.zeros((1, 1, 8, 8), complex), np.zeros((1, 1, 8, 8), bool),
                               np.full((1, 1, 8, 8), "a"), torch.zeros((1, 1, 8, 8), dtype=torch.bool)],
                         ids=["complex", "bool", "strings", "bool tensor"])
def test_inputs_that_are_not_real_numbers_are_refused_not_cast(clf, x):
    for call in (lambda: clf.predict(x), lambda: clf.certify(x, n=10)):
        with pytest.raises(ValueError, match="real"):
            call()


# ART's leading arguments and clone_for_refitting, for every estimator ------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_every_estimator_takes_arts_leading_arguments_and_clones_for_refitting(digits, name):
    (x, y), (x_test, _) = digits
    est = dict(_digit_estimators(x[:100]))[name]
    est._optimizer = torch.optim.SGD(est.model.parameters(), lr=0.01)
    clone = est.clone_for_refitting()
    assert type(clone) is type(est) and clone.model is not est.model
    before, after = est.get_params(), clone.get_params()
    for key in set(before) - {"model", "optimizer", "preprocessing", "preprocessing_defences",
                              "postprocessing_defences"}:
        assert repr(after[key]) == repr(before[key]), key
    first = next(clone.model.parameters())
    assert not torch.equal(first, next(est.model.parameters()))  # weights were reset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert clone.certify(x_test[:2], n=20)[0].shape == (2,)


def test_the_old_denoised_argument_order_gets_a_clear_error():
    from art_some.models.diffusion import IdentityDenoiser

    with pytest.raises(ValueError, match="ART's leading arguments"):
        DenoisedMultiScaleClassifier(DigitsCNN(), IdentityDenoiser(), (1, 8, 8), 10, device_type="cpu",
                                     denoiser="identity")
