"""Data-dependent smoothing: the sigma search, the DDRS trainer and the input-dependent classifier (spec A.7)."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from art_some import DataDependentSmoothedClassifier, DDRSTrainer
from art_some.estimators import UnsoundCertificateWarning
from art_some.estimators.memory import MemoryCertifier
from art_some.estimators.sigma_search import optimize_sigma, soft_radius
from tests.conftest import make_classifier


def _mlp(dim=6, classes=3, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, classes)).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# The sigma search (A.7 tests 1-4)
# ---------------------------------------------------------------------------------------------------------------
def test_soft_radius_gradient_matches_finite_differences():
    model = _mlp(dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    eps = torch.randn(8, 4, 6, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.2, 0.4, 0.7, 1.1], dtype=torch.float64, requires_grad=True)
    clamp = (1e-6, 1 - 1e-6)  # keep the finite differences off the clamp's kinks
    (grad,) = torch.autograd.grad(soft_radius(model, x, sigma, eps, clamp).sum(), sigma)
    h = 1e-5
    with torch.no_grad():
        up, down = soft_radius(model, x, sigma + h, eps, clamp), soft_radius(model, x, sigma - h, eps, clamp)
        numeric = (up - down) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-3, atol=1e-8)


def test_ascent_raises_the_soft_radius_and_respects_the_clamp():
    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 6, generator=gen)
    eps = torch.randn(32, 16, 6, generator=gen)
    sigma0 = torch.full((16,), 0.3)
    sigma = optimize_sigma(model, x, sigma0, lr=0.05, num_steps=50, num_samples=32, eps=eps,
                           prob_clamp=(0.001, 0.999), sigma_range=(0.1, 0.8))
    with torch.no_grad():
        before = soft_radius(model, x, sigma0, eps, (0.001, 0.999))
        after = soft_radius(model, x, sigma, eps, (0.001, 0.999))
    assert torch.all(after >= before - 1e-6) and torch.any(after > before + 1e-3)
    assert float(sigma.min()) >= 0.1 and float(sigma.max()) <= 0.8
    assert torch.equal(optimize_sigma(model, x, sigma0, lr=0.0, num_steps=5, num_samples=2, eps=eps[:2]), sigma0)
    assert torch.equal(optimize_sigma(model, x, 0.3, lr=0.5, num_steps=0, num_samples=2), sigma0)


def test_examples_are_optimised_independently():
    model = _mlp()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 6, generator=gen)
    eps = torch.randn(4, 5, 6, generator=gen)
    batch = optimize_sigma(model, x, 0.4, lr=0.1, num_steps=10, num_samples=4, eps=eps)
    alone = torch.cat([optimize_sigma(model, x[i:i + 1], 0.4, lr=0.1, num_steps=10, num_samples=4, eps=eps[:, i:i + 1])
                       for i in range(5)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-7)


def test_constant_model_keeps_a_finite_clamped_radius():
    class Constant(nn.Module):
        def forward(self, z):
            return torch.tensor([50.0, 0.0, 0.0]).expand(len(z), 3) + 0 * z.sum(dim=1, keepdim=True)

    x = torch.rand(3, 6)
    sigma = torch.full((3,), 0.5, requires_grad=True)
    radius = soft_radius(Constant(), x, sigma, torch.randn(4, 3, 6), (0.02, 0.98))
    (grad,) = torch.autograd.grad(radius.sum(), sigma)
    expected = 0.5 / 2 * 2 * float(torch.special.ndtri(torch.tensor(0.98)))
    torch.testing.assert_close(radius, torch.full((3,), expected))
    assert torch.isfinite(grad).all()
    out = optimize_sigma(Constant(), x, 0.5, lr=1.0, num_steps=20, num_samples=2, sigma_range=(0.1, 2.0))
    assert torch.isfinite(out).all() and float(out.max()) == 2.0  # the proxy grows with sigma: up to the clamp


def test_sigma_search_argument_errors():
    model = _mlp()
    x = torch.rand(2, 6)
    for kwargs, word in (({"sigma_range": (0.5, 0.1)}, "sigma_range"), ({"num_steps": -1}, "num_steps"),
                         ({"lr": -1.0}, "lr"), ({"prob_clamp": (0.9, 0.1)}, "prob_clamp")):
        args = dict(lr=0.1, num_steps=1, num_samples=1) | kwargs
        with pytest.raises(ValueError, match=word):
            optimize_sigma(model, x, 0.3, **args)
    with pytest.raises(ValueError, match="sigma0"):
        optimize_sigma(model, x, -0.3, lr=0.1, num_steps=1, num_samples=1)


# ---------------------------------------------------------------------------------------------------------------
# The DDRS trainer
# ---------------------------------------------------------------------------------------------------------------
def _digits_clf(sigma=0.25, seed=0):
    from art_some.models import DigitsCNN

    torch.manual_seed(seed)
    model = DigitsCNN()
    return make_classifier(model, (1, 8, 8), 10, scale=sigma, optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                           sample_size=32, noise_batch_size=2000)


@pytest.mark.parametrize("base", ["gaussian", "smoothadv", "macer"])
def test_ddrs_trainer_keeps_a_sigma_per_example(digits, base):
    (x, y), _ = digits
    x, y = x[:96], y[:96]
    clf = _digits_clf()
    options = {"num_noise_vec": 4} if base == "macer" else {}
    trainer = DDRSTrainer(clf, base=base, sigma_steps=2, sigma_samples=2, sigma_lr=0.05, seed=1, **options)
    losses = trainer.fit(x, y, batch_size=32, nb_epochs=2)
    assert np.all(np.isfinite(losses)) and trainer.sigmas.shape == (96,)
    assert float(trainer.sigmas.min()) >= 1e-3 and float(trainer.sigmas.max()) <= 2.0
    assert len(torch.unique(trainer.sigmas)) > 50  # every example moved on its own
    # The noise of each example is drawn at its own sigma.
    seen = []
    trainer.base.draw_noise = (lambda original: lambda x, m=None, sigma=None: (seen.append(sigma), original(
        x, m=m, sigma=sigma))[1])(trainer.base.draw_noise)
    trainer.fit(x, y, batch_size=32, nb_epochs=1)
    assert all(isinstance(s, torch.Tensor) and s.shape == (32 // trainer.num_minibatches,) for s in seen)


def test_each_example_keeps_its_own_sigma_under_shuffling_and_custom_loaders(digits):
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    (x, y), _ = digits
    x, y = torch.from_numpy(x[:48]), torch.from_numpy(y[:48]).long()
    trainer = DDRSTrainer(_digits_clf(), sigma_steps=1, sigma_samples=2, sigma_lr=0.05, seed=4)
    seen = []
    original = trainer.base.training_loss

    def record(xb, yb, sigma=None):
        seen.append((xb.clone(), sigma.clone()))
        return original(xb, yb, sigma=sigma)

    trainer.base.training_loss = record
    dataset = TensorDataset(x, y)
    batches = BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(1)), 16, drop_last=False)
    collated = []

    def collate(items):
        collated.append(len(items))
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])

    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    trainer.fit(loader, nb_epochs=2)
    assert collated == [16] * 6  # the loader's own batching and collate are kept
    # The sigma each batch trained with is the table's entry of that very example (found by its pixels).
    # Each example is seen once in the last epoch, so its table entry is the sigma it trained with there.
    assert len(seen) == 6
    for xb, sigma in seen[3:]:
        idx = [int(torch.nonzero((x == row).flatten(1).all(dim=1))[0]) for row in xb]
        torch.testing.assert_close(trainer.sigmas[idx], sigma.float().cpu(), rtol=0, atol=0)
    assert torch.all(trainer.sigmas != 0.25)  # every example moved from sigma0


def test_ddrs_epoch_switch_and_resume(digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    trainer = DDRSTrainer(_digits_clf(), sigma_steps=1, sigma_samples=2, sigma_lr=0.05, epoch_switch=1)
    trainer.fit(x, y, batch_size=32, nb_epochs=1)
    assert torch.all(trainer.sigmas == 0.25)  # before the switch: sigma0, nothing moves
    trainer.fit(x, y, batch_size=32, nb_epochs=1)
    assert torch.any(trainer.sigmas != 0.25)
    # Resume: a fresh trainer loaded from the state continues exactly like the original.
    clf_a, clf_b = _digits_clf(seed=3), _digits_clf(seed=3)
    a = DDRSTrainer(clf_a, sigma_steps=1, sigma_samples=2, sigma_lr=0.05, seed=2)
    a.fit(x, y, batch_size=32, nb_epochs=1)
    state = a.state_dict()
    clf_b.model.load_state_dict(clf_a.model.state_dict())
    clf_b.optimizer.load_state_dict(copy.deepcopy(clf_a.optimizer.state_dict()))  # Adam would share tensors
    b = DDRSTrainer(clf_b, sigma_steps=1, sigma_samples=2, sigma_lr=0.05, seed=2)
    b.load_state_dict(state)
    losses = []
    for trainer in (a, b):
        trainer._shuffle = torch.Generator().manual_seed(0)
        torch.manual_seed(0)  # dropout draws from the global generator
        losses.append(trainer.fit(x, y, batch_size=32, nb_epochs=1))
    assert losses[0] == losses[1]
    torch.testing.assert_close(a.sigmas, b.sigmas)
    with pytest.raises(ValueError, match="training set"):
        a.fit(x[:32], y[:32], batch_size=32, nb_epochs=1)
    with pytest.raises(ValueError, match="base"):
        DDRSTrainer(_digits_clf(), base="consistency")
    with pytest.raises(ValueError, match="sigma_range"):
        DDRSTrainer(_digits_clf(), sigma_range=(0.5, 1.0))


def test_ddrs_defaults_follow_the_scripts():
    assert (DDRSTrainer(_digits_clf()).sigma_steps, DDRSTrainer(_digits_clf()).sigma_samples) == (1, 1)
    adv = DDRSTrainer(_digits_clf(), base="smoothadv")
    assert adv.sigma_steps == 0 and (adv.base.epsilon, adv.base.num_steps) == (0.25, 2)
    macer = DDRSTrainer(_digits_clf(), base="macer")
    assert (macer.sigma_steps, macer.sigma_samples, macer.base.num_noise_vec, macer.base.form) == (10, 64, 64, "ddrs")


# ---------------------------------------------------------------------------------------------------------------
# The input-dependent classifier
# ---------------------------------------------------------------------------------------------------------------
def _dd(clf, **kwargs):
    return DataDependentSmoothedClassifier(clf.model, nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu",
                                           clip_values=(0.0, 1.0), scale=0.25, sample_size=50,
                                           noise_batch_size=2000, **kwargs)


def test_constant_sigma_gives_the_fixed_sigma_certificate_bit_for_bit(trained_digits_classifier, digits):
    _, (x, _) = digits
    x = x[:12]
    dd = _dd(trained_digits_classifier, sigma_rule="optimize", certificate="fixed_sigma", sigma_steps=0)
    with pytest.warns(UnsoundCertificateWarning, match="g_sigma_x"):
        got = dd.certify_detailed(x, n=300)
    plain = make_classifier(trained_digits_classifier.model, (1, 8, 8), 10, scale=0.25, sample_size=50,
                            noise_batch_size=2000).certify_detailed(x, n=300)
    np.testing.assert_array_equal(got.predict, plain.predict)
    np.testing.assert_array_equal(got.counts_estimation, plain.counts_estimation)
    np.testing.assert_array_equal(got.radius, plain.radius)
    assert "not of the input-dependent classifier" in got.extra["certifies"]
    np.testing.assert_array_equal(got.extra["sigma"], np.full(12, 0.25))


def test_optimised_sigma_is_reproducible_per_input_and_not_certified_by_default(trained_digits_classifier, digits):
    _, (x, _) = digits
    with pytest.raises(ValueError, match="fixed_sigma"):
        _dd(trained_digits_classifier, sigma_rule="optimize")
    dd = _dd(trained_digits_classifier, sigma_rule="optimize", certificate="fixed_sigma", sigma_steps=5,
             sigma_samples=8, sigma_lr=0.05)
    x_t = torch.from_numpy(x[:6])
    whole = dd.sigma_of(x_t, indices=np.arange(6))
    parts = np.concatenate([dd.sigma_of(x_t[i:i + 1], indices=[i]) for i in range(6)])
    np.testing.assert_allclose(whole, parts, rtol=1e-6)
    assert np.all(whole != 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsoundCertificateWarning)
        result = dd.certify_detailed(x[:6], n=200)
    np.testing.assert_allclose(result.extra["sigma"], whole, rtol=1e-6)
    # The search is cached for the same inputs and weights only: new weights give a new search.
    model = trained_digits_classifier.model
    with torch.no_grad():
        saved = [p.clone() for p in model.parameters()]
        for p in model.parameters():
            p.mul_(1.5)
    try:
        assert not np.allclose(dd.sigma_of(x_t, indices=np.arange(6)), whole)
    finally:
        with torch.no_grad():
            for p, v in zip(model.parameters(), saved):
                p.copy_(v)
    np.testing.assert_array_equal(dd.sigma_of(x_t, indices=np.arange(6)), whole)
    with pytest.raises(ValueError, match="reference"):
        _dd(trained_digits_classifier)
    with pytest.raises(ValueError, match="certificate"):
        _dd(trained_digits_classifier, sigma_rule="optimize", certificate="cohen")


def test_knn_rule_is_certified_with_the_sound_input_dependent_radius(trained_digits_classifier, digits):
    from art_some.estimators.input_dependent import semi_elastic_radius

    (x_train, _), (x, _) = digits
    dd = _dd(trained_digits_classifier, reference=x_train[:500], rate=0.01, knn_k=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsoundCertificateWarning)  # the default certificate is the sound one
        result = dd.certify_detailed(x[:10], n=500)
    assert result.extra["certificate"] == "input_dependent"
    sigma = result.extra["sigma"]
    assert np.all(np.abs(sigma / 0.25 - 1) < 0.5)
    expected = semi_elastic_radius(result.p_lower, sigma, 0.01, 64)
    certified = result.predict >= 0
    np.testing.assert_allclose(result.radius[certified], expected[certified])
    cohen = sigma * __import__("scipy").stats.norm.ppf(result.p_lower)
    assert np.all(result.radius[certified] <= cohen[certified] + 1e-12)
    # PREDICT runs at sigma(x) too, and ART-style gradients exist.
    assert dd.predict(x[:4]).shape == (4, 10)
    assert dd.loss_gradient(x[:2], np.array([0, 1])).shape == (2, 1, 8, 8)


def test_memory_certification_is_explicit_and_order_dependent(trained_digits_classifier, digits):
    _, (x, _) = digits
    dd = _dd(trained_digits_classifier, sigma_rule="optimize", certificate="fixed_sigma", sigma_steps=0)
    memory = MemoryCertifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsoundCertificateWarning)
        result = dd.certify_with_memory(x[:8], n=200, memory=memory)
        plain = dd.certify_detailed(x[:8], n=200)
    assert len(memory) == 8 and dd.certificate == "fixed_sigma"
    assert result.extra["certificate"] == "memory" and "order-dependent" in result.extra["certifies"]
    # With no conflicts the memory changes nothing; where it changed something the record says so.
    changed = result.extra["memory_changed"]
    np.testing.assert_array_equal(result.predict[~changed], plain.predict[~changed])
