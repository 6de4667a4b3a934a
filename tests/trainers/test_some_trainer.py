"""SOME circular teaching: the lambda schedule, the self-paced weights, reductions to the base methods, batching,
the SmoothMix pieces inside SOME, DDP, and learning on digits (spec some.md section 9)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from art_some import MultiHeadSmoothedClassifier, SmoothMixTrainer, SOMETrainer
from art_some.models.multihead import MultiHeadNet, digits_cnn_multihead
from art_some.trainers.consistency import consistency_loss
from art_some.trainers.smoothmix import warmup_factor
from art_some.trainers.some import lambda_schedule, self_paced_weights, some_defaults
from tests.conftest import make_classifier


def make_multihead(net, sigma=0.25, lr=0.05, **kwargs):
    kwargs.setdefault("clip_values", (0.0, 1.0))
    kwargs.setdefault("optimizer", torch.optim.SGD(net.parameters(), lr=lr))
    return MultiHeadSmoothedClassifier(net, nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", scale=sigma,
                                       **kwargs)


def digits_batch(digits, size=16):
    (x, y), _ = digits
    return torch.from_numpy(x[:size]), torch.from_numpy(y[:size]).long()


# --- schedule -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("last, values", [
    (0.8, [2.303, 1.846, 1.256, 0.971, 0.800]),
    (1.2, [2.303, 2.071, 1.618, 1.361, 1.200]),
    (1.6, [2.303, 2.208, 1.935, 1.736, 1.600]),
])
def test_lambda_schedule_spot_values(last, values):
    got = [lambda_schedule(t, 150, 10, last) for t in (1, 10, 50, 100, 150)]
    np.testing.assert_allclose(got, values, atol=6e-4)


def test_lambda_schedule_endpoints_affinity_and_imagenet():
    assert lambda_schedule(1, 150, 10, 1.2) == pytest.approx(math.log(10), abs=1e-12)
    assert lambda_schedule(150, 150, 10, 1.2) == pytest.approx(1.2, abs=1e-12)
    powers = np.array([10 ** -lambda_schedule(t, 150, 10, 1.2) for t in range(1, 151)])
    np.testing.assert_allclose(np.diff(powers), np.diff(powers)[0], rtol=1e-9)  # 10^-lambda affine in t
    assert np.all(np.diff(powers) > 0)  # lambda decreases
    assert lambda_schedule(200, 150, 10, 1.2) == pytest.approx(1.2)
    got = [lambda_schedule(t, 150, 1000, 1.0) for t in (1, 2, 10)]
    np.testing.assert_allclose(got, [6.908, 3.173, 2.219], atol=1e-3)


def test_some_defaults_follow_the_published_table():
    assert some_defaults("gaussian", 0.25) == {"lambda_last": 1.2}
    assert some_defaults("consistency", 0.5) == {"lambda_last": 0.8, "lbd": 10.0}
    assert some_defaults("smoothmix", 1.0) == {"lambda_last": 1.6, "step_size": 2.0, "mix_step": 1}
    assert some_defaults("smoothmix", 0.25)["mix_step"] == 0
    with pytest.raises(ValueError, match="lambda_last"):
        some_defaults("gaussian", 0.3)


# --- self-paced weights ---------------------------------------------------------------------------------------

def test_self_paced_weights_follow_the_official_rule():
    lam = 1.0
    losses = torch.tensor([[0.5, 2.0, 1.0, 3.0], [1.5, 0.2, 0.7, 4.0], [0.1, 0.3, 2.5, 1.0]])
    weights = self_paced_weights(losses, lam)
    assert torch.all((weights >= 0) & (weights <= 1))
    teacher = losses.roll(1, dims=0)
    hard = (1 + math.exp(-lam)) / (1 + torch.exp(losses - lam))  # the student's own loss
    for k in range(3):
        for i in range(4):
            if teacher[k, i] < lam:
                assert weights[k, i] == 1
            elif teacher[k, i] > lam:
                assert weights[k, i] == pytest.approx(float(hard[k, i]))
            else:
                assert weights[k, i] == 0
    # Head 1 is taught by head 0: sample 1 is hard for head 0 (2.0), so head 1 gets the logistic weight of its
    # own loss 0.2, not of the teacher's 2.0.
    assert weights[1, 1] == pytest.approx((1 + math.exp(-1)) / (1 + math.exp(0.2 - 1)))
    assert weights[1, 1] != pytest.approx((1 + math.exp(-1)) / (1 + math.exp(2.0 - 1)))
    assert weights[0, 3] == 0  # head 0's teacher is head 2, whose loss equals lambda: neither mask is set
    # Rolling the head order rolls the weights.
    torch.testing.assert_close(self_paced_weights(losses.roll(1, dims=0), lam), weights.roll(1, dims=0))


def test_self_paced_weights_corner_cases():
    lam = 0.7
    losses = torch.tensor([[0.7, 0.1], [0.9, 2.0]], requires_grad=True)
    weights = self_paced_weights(losses * 1.0, lam)
    assert not weights.requires_grad and weights.grad_fn is None
    # M = 2: heads teach each other. Head 1's teacher is head 0 (0.7 == lambda: weight 0); head 0's teacher is
    # head 1 (0.9 > lambda: logistic weight of head 0's own 0.7, i.e. (1 + e^-lambda) / 2).
    assert weights[1, 0] == 0
    assert weights[0, 0] == pytest.approx((1 + math.exp(-lam)) / 2)
    assert weights[1, 1] == 1 and weights[0, 1] == pytest.approx((1 + math.exp(-lam)) / (1 + math.exp(0.1 - lam)))
    big = self_paced_weights(torch.tensor([[50.0], [60.0]]), 0.5)  # hard for both teachers, huge own losses
    assert 0 <= float(big.max()) < 1e-20


# --- losses and reductions ------------------------------------------------------------------------------------

def _trainer(clf, **kwargs):
    kwargs.setdefault("seed", 3)
    trainer = SOMETrainer(clf, **kwargs)
    trainer.lam = 1e6  # above every loss: every weight is 1
    return trainer


def test_all_easy_gaussian_loss_is_the_mean_over_heads_of_the_m_draw_ce(digits):
    torch.manual_seed(0)
    net = digits_cnn_multihead(num_heads=3)
    x, y = digits_batch(digits)
    trainer = _trainer(make_multihead(net), num_noise_vec=3, cosine_weight=0.0)
    loss = trainer.training_loss(x, y)
    noise = 0.25 * _same_noise(trainer._classifier, x, 3)
    net.train()
    ce = [nn.functional.cross_entropy(head(net.trunk(x + noise[j])), y) for j in range(3) for head in net.heads]
    assert float(loss.detach()) == pytest.approx(float(torch.stack(ce).mean().detach()), rel=1e-5)
    with_cos = _trainer(make_multihead(net), num_noise_vec=3).training_loss(x, y)
    assert float((with_cos - loss).detach()) == pytest.approx(float(net.cosine_loss().detach()), abs=1e-6)
    assert float(net.cosine_loss().detach()) > 1e-5


def _same_noise(clf, x, m, seed=3):
    """The standard-normal noise a fresh trainer with the same seed draws first."""
    fresh = SOMETrainer(clf, seed=seed, num_noise_vec=m, lambda_last=1.0)
    return fresh.noise_like(x.unsqueeze(0).expand(m, *x.shape))


def test_one_head_consistency_reduces_to_jeong_and_shin(digits):
    torch.manual_seed(0)
    net = digits_cnn_multihead(num_heads=1)
    x, y = digits_batch(digits)
    clf = make_multihead(net)
    original = _trainer(clf, base="consistency", lbd=10.0, detach_consistency_target=False).training_loss(x, y)
    noise = 0.25 * _same_noise(clf, x, 2)
    net.train()
    logits = torch.stack([net(x + noise[j]) for j in range(2)])
    assert float(original.detach()) == pytest.approx(float(consistency_loss(logits, y, 10.0, 0.5).detach()), rel=1e-5)
    # The official SOME code detaches p_bar: same value, but the entropy term no longer carries gradient.
    detached = _trainer(clf, base="consistency", lbd=0.0, detach_consistency_target=True, eta=1.0)
    entropy_only = detached.training_loss(x, y) - _trainer(clf, base="gaussian").training_loss(x, y)
    net.zero_grad()
    entropy_only.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) < 1e-6 for p in net.parameters())


def test_one_head_smoothmix_with_the_correct_mask_is_plain_smoothmix(digits):
    x, y = digits_batch(digits, 12)
    losses = []
    for some in (True, False):
        torch.manual_seed(0)
        net = digits_cnn_multihead(num_heads=1)
        clf = make_multihead(net, sigma=0.5)
        if some:
            trainer = _trainer(clf, base="smoothmix", mix_mask="correct", lambda_last=1.0)
        else:
            trainer = SmoothMixTrainer(clf, seed=3, mix_step=1)  # SOME's mix_step at sigma 0.5 (SmoothMix's is 0)
        trainer.epoch = 4
        losses.append(float(trainer.training_loss(x, y).detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert losses[0] > 0


def test_smoothmix_terms_are_weighted_by_the_teaching_weights(digits, monkeypatch):
    """Every per-sample term (CE and mixup) scales with v_k; the cosine term does not."""
    from art_some.trainers import some

    x, y = digits_batch(digits, 8)
    radii = []
    real_attack = some.attack_smoothed

    def recording_attack(*args, **kwargs):
        radii.append(kwargs["mix_radius"])
        return real_attack(*args, **kwargs)

    monkeypatch.setattr(some, "attack_smoothed", recording_attack)
    totals = {}
    for c in (1.0, 0.3):
        monkeypatch.setattr(some, "self_paced_weights", lambda losses, lam, c=c: torch.full_like(losses, c))
        torch.manual_seed(0)
        net = digits_cnn_multihead(num_heads=2)
        trainer = SOMETrainer(make_multihead(net, sigma=0.5), base="smoothmix", seed=3, lambda_last=1.0)
        trainer.epoch = 3
        totals[c] = float(trainer.training_loss(x, y).detach()) - float(net.cosine_loss().detach())
    assert totals[0.3] == pytest.approx(0.3 * totals[1.0], rel=1e-4)
    assert radii == [pytest.approx(1.0 * 1 * 0.3)] * 2  # alpha * mix_step * warm-up at epoch 3


def test_smoothmix_inside_some_keeps_bn_statistics_and_the_input_domain():
    from art_some.models.multihead import cifar_resnet_multihead

    torch.manual_seed(0)
    net = cifar_resnet_multihead(depth=8, num_heads=2, in_channels=1)
    clf = MultiHeadSmoothedClassifier(net, nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", scale=1.0,
                                      clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(net.parameters(), lr=0.0))
    trainer = SOMETrainer(clf, base="smoothmix")
    trainer.epoch = 1
    x = torch.rand(6, 1, 8, 8)
    y = torch.arange(6) % 10
    noise = trainer.draw_noise(x)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    from art_some.trainers.smoothmix import attack_smoothed

    x_clean, x_adv = attack_smoothed(clf, x, y, noise, step_size=2.0, num_steps=4, mix_step=1, mix_radius=0.2,
                                     maxnorm=None, clip=(0.0, 1.0))
    for key, value in before.items():
        torch.testing.assert_close(net.state_dict()[key], value)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_clean - x).flatten(1).norm(dim=1).max()) <= 0.2 + 1e-5
    assert all(p.grad is None for p in net.parameters())  # only the input was differentiated
    x_same, _ = attack_smoothed(clf, x, y, noise, step_size=2.0, num_steps=4, mix_step=0, mix_radius=0.0,
                                maxnorm=None, clip=(0.0, 1.0))
    torch.testing.assert_close(x_same, x)
    assert [warmup_factor(e) for e in (1, 5, 10, 11, 100)] == [0.1, 0.5, 1.0, 1.0, 1.0]


# --- batching and noise alignment -----------------------------------------------------------------------------

class LabelOracle(nn.Module):
    """Head that reads the label written in pixel (0, 0) and answers it with a huge logit."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.ones(1))

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        return 50.0 * nn.functional.one_hot(label, 10).float() * self.dummy


def test_noise_copies_are_aligned_with_labels_and_each_minibatch_steps():
    net = MultiHeadNet(nn.Identity(), [LabelOracle(), LabelOracle()])
    clf = make_multihead(net, sigma=1e-4)
    sizes = []
    net.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(len(args[0])), with_kwargs=True)
    steps = []
    step = clf.optimizer.step
    clf.optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    y = np.arange(10).repeat(2)
    x = np.zeros((20, 1, 8, 8), np.float32)
    x[:, 0, 0, 0] = y / 10
    trainer = SOMETrainer(clf, num_noise_vec=2, cosine_weight=0.0, lambda_last=1.0)
    history = trainer.fit(x, y, batch_size=10, nb_epochs=1)
    assert history[0] < 1e-6  # every noisy copy met its own label
    assert len(steps) == 4 and sizes == [10] * 4  # 2 loader batches x 2 mini-batches of 5, m=2 copies each
    sizes.clear()
    trainer.fit(x[:9], y[:9], batch_size=9, nb_epochs=1)
    assert sizes == [8, 8]  # chunks of 4, the ninth sample dropped


def test_chunk_j_of_the_forward_pass_is_noise_draw_j(digits):
    torch.manual_seed(0)
    net = digits_cnn_multihead(num_heads=2)
    seen = []
    net.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x, y = digits_batch(digits, 6)
    clf = make_multihead(net, sigma=0.5)
    SOMETrainer(clf, num_noise_vec=3, lambda_last=1.0, seed=3).training_loss(x, y)
    expected = x.unsqueeze(0) + 0.5 * _same_noise(clf, x, 3)
    torch.testing.assert_close(seen[0].view(3, 6, 1, 8, 8), expected)


# --- learning, errors -----------------------------------------------------------------------------------------

def test_some_learns_digits_and_is_deterministic(digits):
    (x, y), (x_test, y_test) = digits
    histories, accuracies = [], []
    for _ in range(2):
        torch.manual_seed(0)
        net = digits_cnn_multihead(num_heads=3)
        clf = make_multihead(net, optimizer=torch.optim.Adam(net.parameters(), lr=1e-3))
        histories.append(SOMETrainer(clf, seed=1).fit(x, y, batch_size=128, nb_epochs=4))
        counts = clf.predict_counts(x_test, n=20)
        accuracies.append(float(np.mean(counts.argmax(1) == y_test)))
    assert histories[0] == histories[1]
    assert histories[0][-1] < histories[0][0]
    assert accuracies[0] > 0.8


def test_some_trainer_argument_errors():
    net = digits_cnn_multihead(num_heads=2)
    clf = make_multihead(net)
    with pytest.raises(ValueError, match="base must be one of"):
        SOMETrainer(clf, base="macer")
    with pytest.raises(ValueError, match="mix_mask"):
        SOMETrainer(clf, base="smoothmix", mix_mask="sometimes")
    with pytest.raises(ValueError, match="mix_step"):
        SOMETrainer(clf, base="smoothmix", mix_step=5, num_steps=4)
    with pytest.raises(ValueError, match="published defaults"):
        SOMETrainer(make_multihead(net, sigma=0.3))
    assert SOMETrainer(make_multihead(net, sigma=0.3), lambda_last=1.0).lambda_last == 1.0
    with pytest.raises(ValueError, match="multi-head"):
        from art_some.models import DigitsCNN

        plain = DigitsCNN()
        SOMETrainer(make_classifier(plain, (1, 8, 8), 10, optimizer=torch.optim.SGD(plain.parameters(), lr=0.1)))
    with pytest.raises(ValueError, match="num_noise_vec"):
        SOMETrainer(clf, num_noise_vec=0)
