import numpy as np
import pytest
import torch
from art.attacks.evasion import (
    AutoProjectedGradientDescent,
    CarliniL2Method,
    DeepFool,
    FastGradientMethod,
    HopSkipJump,
    ProjectedGradientDescent,
    SquareAttack,
)
from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

from art_some import SmoothedClassifier
from tests.conftest import Linear2, make_classifier


class StdProbe(torch.nn.Module):
    """Records the standard deviation of what the network sees, and votes class 0."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(float(x.detach().std()))
        return self.lin(x) * 0 + torch.tensor([1.0, 0.0])


def test_is_an_art_randomized_smoothing_estimator(trained_digits_classifier):
    assert isinstance(trained_digits_classifier, PyTorchRandomizedSmoothing)


def test_certify_follows_art_conventions(trained_digits_classifier, digits):
    _, (x, y) = digits
    pred, radius = trained_digits_classifier.certify(x[:20], n=500, batch_size=1000)
    assert pred.dtype.kind == "i" and radius.dtype == np.float64
    assert np.all(radius[pred == -1] == 0.0) and np.all(radius[pred >= 0] >= 0)
    assert np.mean(pred == y[:20]) > 0.8
    detailed = trained_digits_classifier.certify_detailed(x[:20], n=500)
    np.testing.assert_array_equal(detailed.predict, pred)
    assert detailed.counts_estimation.sum(axis=1).tolist() == [500] * 20
    assert detailed.n0 == 32 and detailed.sigma == 0.25


def test_certify_is_reproducible_and_keyed_by_index(trained_digits_classifier, digits):
    _, (x, _) = digits
    a = trained_digits_classifier.certify_detailed(x[:6], n=300)
    b = trained_digits_classifier.certify_detailed(x[3:6], n=300, indices=[3, 4, 5], batch_size=7)
    np.testing.assert_array_equal(a.counts_estimation[3:], b.counts_estimation)


def test_noise_is_added_before_preprocessing_in_fit_and_predict():
    # With preprocessing divisor 0.1, sigma 0.2 in raw space is std 2 at the network, in training and inference.
    probe = StdProbe()
    clf = make_classifier(probe, (4,), 2, scale=0.2, preprocessing=(0.0, 0.1), sample_size=4000,
                          optimizer=torch.optim.SGD(probe.parameters(), lr=0.0), clip_values=None)
    x = np.zeros((1, 4), dtype=np.float32)
    clf.predict(x)
    assert probe.seen[-1] == pytest.approx(2.0, rel=0.05)
    clf.fit(np.zeros((512, 4), dtype=np.float32), np.zeros(512, dtype=int), batch_size=512, nb_epochs=1)
    assert probe.seen[-1] == pytest.approx(2.0, rel=0.05)


def test_predict_returns_arts_one_hot_rows_and_vote_counts_on_request():
    w = np.ones(4)
    clf = make_classifier(Linear2(w, 0.0), (4,), 2, scale=1.0, sample_size=200, clip_values=None)
    x = np.array([[3, 3, 3, 3], [0, 0, 0, 0]], dtype=np.float32)  # far from / on the boundary
    scores = clf.predict(x)
    assert scores.tolist() == [[0.0, 1.0], [0.0, 0.0]]  # a tie at the boundary: abstain, an all-zero row
    counts = clf.predict(x, output="counts")
    assert counts[0].tolist() == [0.0, 200.0] and counts[1].tolist() == [0.0, 0.0]
    assert clf.predict(x, output="onehot").tolist() == scores.tolist()
    assert clf.predict(x, is_abstain=False)[1].sum() == 1
    assert clf.predict(x, output="counts", is_abstain=False)[1].sum() == 200
    with pytest.raises(ValueError, match="output"):
        clf.predict(x, output="probabilities")


def test_loss_gradient_is_the_smoothed_gradient_for_numpy_and_torch():
    w = np.array([1.0, -2.0, 0.5, 0.0])
    clf = make_classifier(Linear2(w, 0.0), (4,), 2, scale=0.5, gradient_samples=4000, clip_values=None)
    x = np.array([[0.1, 0.0, 0.0, 0.3]], dtype=np.float32)
    g = clf.loss_gradient(x, np.array([1]))
    assert isinstance(g, np.ndarray) and g.shape == x.shape
    cos = float(g.ravel() @ -w / np.linalg.norm(g) / np.linalg.norm(w))
    assert cos > 0.99  # the smoothed loss of class 1 falls along +w
    g_t = clf.loss_gradient(torch.from_numpy(x), torch.tensor([[0.0, 1.0]]))
    assert isinstance(g_t, torch.Tensor) and g_t.shape == x.shape
    losses = clf.compute_loss(np.repeat(x, 3, 0), np.array([0, 1, 1]), reduction="none")
    assert losses.shape == (3,) and losses[0] > losses[1]


def test_class_gradient_shapes_and_direction():
    w = np.array([1.0, -2.0, 0.5, 0.0])
    clf = make_classifier(Linear2(w, 0.0), (4,), 2, scale=0.5, gradient_samples=2000, clip_values=None)
    x = np.zeros((3, 4), dtype=np.float32)
    assert clf.class_gradient(x).shape == (3, 2, 4)
    g1 = clf.class_gradient(x, label=1)
    assert g1.shape == (3, 1, 4)
    assert clf.class_gradient(x, label=[0, 1, 1]).shape == (3, 1, 4)
    cos = g1[0, 0] @ w / np.linalg.norm(g1[0, 0]) / np.linalg.norm(w)
    assert cos > 0.99
    with pytest.raises(ValueError, match="label"):
        clf.class_gradient(x, label=5)


def test_params_round_trip_and_clone(trained_digits_classifier):
    params = trained_digits_classifier.get_params()
    assert params["scale"] == 0.25 and params["sample_size"] == 32 and params["seed"] == 0
    clone = trained_digits_classifier.clone_for_refitting()
    assert isinstance(clone, SmoothedClassifier)
    assert clone.get_params()["noise_batch_size"] == 2000
    clone.set_params(scale=0.5, seed=3)
    assert clone.scale == 0.5 and clone.seed == 3 and trained_digits_classifier.scale == 0.25


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scale=0.0), "sigma"),
        (dict(scale=-1.0), "sigma"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(sample_size=0), "sample_size"),
        (dict(noise_batch_size=0), "noise_batch_size"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_classifier(Linear2(np.ones(4), 0), (4,), 2, **kwargs)


def test_bad_inputs(trained_digits_classifier):
    with pytest.raises(ValueError, match="shape"):
        trained_digits_classifier.predict(np.zeros((2, 1, 9, 9), dtype=np.float32))
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        trained_digits_classifier.certify(x, n=10)
    with pytest.raises(ValueError, match="n must"):
        trained_digits_classifier.certify(np.zeros((1, 1, 8, 8), np.float32), n=0)


# ---------------------------------------------------------------------------------------------------------------
# ART's attacks run against the smoothed classifier (small budgets).
# ---------------------------------------------------------------------------------------------------------------
ATTACKS = {
    "FastGradientMethod": lambda c: FastGradientMethod(c, norm=2, eps=2.0),
    "ProjectedGradientDescent": lambda c: ProjectedGradientDescent(c, norm=2, eps=2.0, eps_step=0.5, max_iter=5,
                                                                   verbose=False),
    "AutoProjectedGradientDescent": lambda c: AutoProjectedGradientDescent(c, norm=2, eps=2.0, eps_step=0.5,
                                                                           max_iter=5, nb_random_init=1,
                                                                           verbose=False),
    "CarliniL2Method": lambda c: CarliniL2Method(c, max_iter=5, binary_search_steps=2, learning_rate=0.1,
                                                 initial_const=1.0, verbose=False),
    "DeepFool": lambda c: DeepFool(c, max_iter=5, verbose=False),
    "SquareAttack": lambda c: SquareAttack(c, norm=2, eps=2.0, max_iter=30, verbose=False),
    "HopSkipJump": lambda c: HopSkipJump(c, norm=2, max_iter=2, max_eval=50, init_eval=10, init_size=20,
                                         verbose=False),
}
GRADIENT_ATTACKS = {"FastGradientMethod", "ProjectedGradientDescent", "AutoProjectedGradientDescent",
                    "CarliniL2Method", "DeepFool"}


@pytest.fixture(scope="module")
def image_classifier():
    # Square needs images of at least ~16 px (ART's L2 Square divides by zero on 8x8 images).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 16 * 16, 3))
    return make_classifier(model, (1, 16, 16), 3, scale=0.25, sample_size=32, gradient_samples=16)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_art_attack_runs_against_the_smoothed_classifier(name, image_classifier, monkeypatch):
    clf = image_classifier
    x = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    calls = {"smoothed": 0}
    original = SmoothedClassifier.smoothed_log_proba

    def spy(self, *args, **kwargs):
        calls["smoothed"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SmoothedClassifier, "smoothed_log_proba", spy)
    x_adv = ATTACKS[name](clf).generate(x)
    assert x_adv.shape == x.shape and np.all(np.isfinite(x_adv))
    assert np.all(x_adv >= -1e-6) and np.all(x_adv <= 1 + 1e-6)
    if name in GRADIENT_ATTACKS:
        assert calls["smoothed"] > 0  # gradients came from the smoothed (EOT) classifier
    moved = np.linalg.norm((x_adv - x).reshape(3, -1), axis=1)
    assert np.any(moved > 0), f"{name} made no progress"


def test_pgd_beats_the_trained_smoothed_classifier(trained_digits_classifier, digits):
    _, (x, y) = digits
    clf = trained_digits_classifier
    before = clf.predict(x[:10]).argmax(1)
    x_adv = ProjectedGradientDescent(clf, norm=2, eps=3.0, eps_step=0.75, max_iter=8, verbose=False).generate(
        x[:10], y=y[:10])
    after = clf.predict(x_adv).argmax(1)
    assert np.sum(after != y[:10]) > np.sum(before != y[:10])


def test_certify_streams_at_noise_batch_size_by_default(monkeypatch):
    clf = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, noise_batch_size=500, clip_values=None)
    sizes = []
    original = SmoothedClassifier.vote

    def spy(self, z):
        sizes.append(len(z))
        return original(self, z)

    monkeypatch.setattr(SmoothedClassifier, "vote", spy)
    clf.certify(np.zeros((1, 4), np.float32), n=2000)
    assert max(sizes) == 500


def test_label_column_is_read_as_class_indices():
    clf = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, gradient_samples=64, clip_values=None)
    x = np.full((2, 4), 0.3, np.float32)
    a = clf.compute_loss(x, np.array([[1], [0]]))
    clf_b = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, gradient_samples=64, clip_values=None)
    b = clf_b.compute_loss(x, np.array([1, 0]))
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError, match="columns"):
        clf.compute_loss(x, np.zeros((2, 3)))


def test_set_params_seed_reseeds_gradient_noise():
    x, y = np.full((1, 4), 0.3, np.float32), np.array([1])
    a = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, gradient_samples=8, clip_values=None)
    a.loss_gradient(x, y)
    a.set_params(seed=123)
    b = make_classifier(Linear2(np.ones(4), 0.0), (4,), 2, scale=0.5, gradient_samples=8, clip_values=None,
                        seed=123)
    np.testing.assert_array_equal(a.loss_gradient(x, y), b.loss_gradient(x, y))
