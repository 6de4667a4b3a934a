"""SmoothMix's shared pieces and single-network trainer (spec trainers.md B.5)."""
import numpy as np
import pytest
import torch
from torch import nn

from art_some import SmoothMixTrainer
from art_some.trainers.smoothmix import (
    kl_to_target,
    mixup,
    noisy_logits,
    smoothed_nll,
    smoothmix_adversary,
    soft_log_proba,
)
from tests.conftest import make_classifier


class LinearSoftmax(nn.Module):
    def __init__(self, dim=12, classes=3, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(dim, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, dim, generator=gen))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


def _objective(model, noise, y):
    def objective(z):
        return smoothed_nll(soft_log_proba(noisy_logits(lambda v: model(v).unsqueeze(0), z, noise)), y)

    return objective


def test_each_adversary_step_has_length_alpha_and_maxnorm_bounds_it():
    model = LinearSoftmax()
    x = torch.rand(5, 12)
    y = torch.tensor([0, 1, 2, 0, 1])
    noise = 0.3 * torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(1))
    objective = _objective(model, noise, y)
    previous = x
    for steps in range(1, 4):
        _, x_adv = smoothmix_adversary(objective, x, step_size=0.7, num_steps=steps, mix_step=0, clip=None)
        step_lengths = (x_adv - previous).norm(dim=1)
        torch.testing.assert_close(step_lengths, torch.full((5,), 0.7), atol=1e-5, rtol=0)
        assert float((x_adv - x).norm(dim=1).max()) <= 0.7 * steps + 1e-5
        previous = x_adv
    _, bounded = smoothmix_adversary(objective, x, step_size=0.7, num_steps=6, mix_step=0, maxnorm=1.0, clip=None)
    assert float((bounded - x).norm(dim=1).max()) <= 1.0 + 1e-5
    _, clipped = smoothmix_adversary(objective, x, step_size=0.7, num_steps=6, mix_step=0)
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1


def test_adversary_lowers_the_smoothed_probability_of_the_label():
    model = LinearSoftmax()
    x = torch.rand(4, 12)
    y = torch.tensor([2, 0, 1, 2])
    noise = 0.2 * torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(2))
    objective = _objective(model, noise, y)
    probs = []
    for steps in range(6):
        _, x_adv = smoothmix_adversary(objective, x, step_size=0.05, num_steps=steps, mix_step=0, clip=None)
        probs.append(torch.exp(-objective(x_adv)).detach())
    probs = torch.stack(probs)
    assert torch.all(probs[1:] <= probs[:-1] + 1e-7)
    assert torch.all(probs[-1] < probs[0])


def test_mixup_targets_and_coefficients():
    gen = torch.Generator().manual_seed(0)
    x_clean, x_adv = torch.zeros(500, 3), torch.ones(500, 3)
    target = torch.softmax(torch.randn(500, 4, generator=gen), dim=1)
    x_mix, y_mix, u = mixup(x_clean, x_adv, target, gen)
    assert float(u.min()) >= 0 and float(u.max()) <= 0.5 and float(u.max()) > 0.45
    torch.testing.assert_close(x_mix, u.unsqueeze(1).expand(500, 3))
    assert torch.all(y_mix >= 0)
    torch.testing.assert_close(y_mix.sum(dim=1), torch.ones(500))
    torch.testing.assert_close(y_mix, (1 - u.unsqueeze(1)) * target + u.unsqueeze(1) / 4)


def test_kl_to_target_is_the_mean_of_per_copy_kls():
    logits = torch.randn(1, 3, 2, 5)
    target = torch.softmax(torch.randn(2, 5), dim=1)
    expected = torch.stack([
        torch.stack([(target[b] * (target[b].log() - torch.log_softmax(logits[0, j, b], 0))).sum() for j in range(3)])
        .mean() for b in range(2)])
    torch.testing.assert_close(kl_to_target(target, logits)[0], expected)


def _trainer(sigma=0.5, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    clf = make_classifier(model, (1, 8, 8), 10, scale=sigma, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    kwargs.setdefault("seed", 5)
    trainer = SmoothMixTrainer(clf, **kwargs)
    trainer.epoch = 3
    return trainer, model


def test_eta_zero_is_gaussian_augmentation_on_the_m_copies(digits):
    (x, y), _ = digits
    x, y = torch.from_numpy(x[:8]), torch.from_numpy(y[:8]).long()
    trainer, model = _trainer(eta=0.0, mix_step=0, num_noise_vec=3)
    loss = trainer.training_loss(x, y)
    noise = trainer.sigma * SmoothMixTrainer(trainer._classifier, seed=5).noise_like(x.expand(3, *x.shape))
    expected = torch.stack([nn.functional.cross_entropy(model(x + noise[j]), y) for j in range(3)]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_wrong_predictions_get_no_mixup_term(digits):
    (x, y), _ = digits
    x = torch.from_numpy(x[:1])

    def loss(label, eta):  # tiny sigma and the clean input as x_c: F_hat(x_c) predicts model(x)'s class
        return float(_trainer(sigma=0.01, mix_step=0, eta=eta)[0].training_loss(x, label).detach())

    with torch.no_grad():
        predicted = int(_trainer()[1](x).argmax())
    wrong = torch.tensor([(predicted + 1) % 10])
    assert loss(wrong, 5.0) == pytest.approx(loss(wrong, 0.0), rel=1e-6)  # the indicator masked the KL term out
    right = torch.tensor([predicted])
    assert loss(right, 5.0) > loss(right, 0.0) + 1e-5


def test_clean_side_and_one_step_ball(digits):
    (x, y), _ = digits
    x, y = torch.from_numpy(x[:6]), torch.from_numpy(y[:6]).long()
    trainer, _ = _trainer(num_steps=0, mix_step=0)
    noise = trainer.draw_noise(x)
    x_clean, x_adv = trainer.adversary(x, y, noise, warmup=1.0)
    torch.testing.assert_close(x_clean, x)
    torch.testing.assert_close(x_adv, x)  # T = 0 and s = 0: x_mix = x
    trainer, _ = _trainer(num_steps=4, mix_step=1, step_size=1.0)
    x_clean, _ = trainer.adversary(x, y, noise, warmup=0.3)
    assert float((x_clean - x).flatten(1).norm(dim=1).max()) <= 0.3 + 1e-5
    assert float((x_clean - x).flatten(1).norm(dim=1).min()) > 0.29  # the one-step iterate, pulled onto the ball


def test_m_steps_per_loader_batch_and_forward_sizes(digits):
    (x, y), _ = digits
    trainer, model = _trainer(num_noise_vec=2, num_steps=2)
    sizes, steps = [], []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    step = trainer._classifier.optimizer.step
    trainer._classifier.optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    trainer.fit(x[:16], y[:16], batch_size=16, nb_epochs=1)
    assert len(steps) == 2
    assert sizes == [16] * (2 * (2 + 2))  # per step: 2 attack passes, the clean pass and the mixed pass


def test_defaults_and_errors():
    trainer, _ = _trainer(sigma=0.25)
    assert (trainer.step_size, trainer.mix_step, trainer.num_steps, trainer.eta) == (0.5, 0, 4, 5.0)
    # The SmoothMix code's mix_step default is 0 at every sigma (0 / 1 / 1 by sigma is SOME's choice).
    assert _trainer(sigma=1.0)[0].step_size == 2.0 and _trainer(sigma=1.0)[0].mix_step == 0
    with pytest.raises(ValueError, match="mix_step"):
        _trainer(num_steps=1, mix_step=2)
    with pytest.raises(ValueError, match="step_size"):
        _trainer(step_size=0.0)
    trainer, _ = _trainer()
    with pytest.raises(ValueError, match="clip_values"):
        trainer.training_loss(torch.full((2, 1, 8, 8), 2.0), torch.tensor([0, 1]))
    assert np.isfinite(trainer.fit(np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32),
                                   np.arange(8), batch_size=8, nb_epochs=1)[0])
