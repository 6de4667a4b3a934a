"""SmoothAdv, MACER and certified robustness transfer (spec trainers.md C.5 and the SmoothAdv/MACER losses)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from art_some import CRTTrainer, MACERTrainer, SmoothAdvTrainer
from art_some.trainers.crt import transfer_loss
from art_some.trainers.macer import macer_loss
from art_some.trainers.smoothadv import pgd_l2
from tests.conftest import make_classifier
from tests.trainers.test_smoothmix import _objective  # the smoothed NLL over fixed draws, as SmoothMix's tests build it


def _mlp(seed=0, classes=10):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))


def _clf(model=None, sigma=0.5, lr=0.1):
    model = _mlp() if model is None else model
    return make_classifier(model, (1, 8, 8), 10, scale=sigma, optimizer=torch.optim.SGD(model.parameters(), lr=lr))


# ---------------------------------------------------------------------------------------------------------------
# SmoothAdv
# ---------------------------------------------------------------------------------------------------------------
def test_pgd_l2_geometry_and_ascent():
    model = _mlp()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.arange(6)
    noise = 0.3 * torch.randn(3, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    objective = _objective(model, noise, y)
    one = pgd_l2(objective, x, epsilon=0.2, num_steps=4, clip=None)
    # Step 1 of T moves by exactly 2 eps / T (the ball is not reached yet), along the gradient.
    first = pgd_l2(objective, x, epsilon=0.2, num_steps=1, clip=None)
    torch.testing.assert_close((first - x).flatten(1).norm(dim=1), torch.full((6,), 0.2), atol=1e-5, rtol=0)
    assert float((one - x).flatten(1).norm(dim=1).max()) <= 0.2 + 1e-5
    assert torch.all(objective(one) > objective(x))  # the smoothed NLL of the label rose
    clipped = pgd_l2(objective, x, epsilon=3.0, num_steps=5)
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
    assert float((clipped - x).flatten(1).norm(dim=1).max()) <= 3.0 + 1e-5
    assert torch.equal(pgd_l2(objective, x, epsilon=0.0, num_steps=3, clip=None), x)


def test_pgd_l2_steps_are_two_epsilon_over_t_until_the_ball():
    # A linear objective has a constant gradient: the iterates move 2 eps / T per step along it until ||delta|| = eps.
    w = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    norms = []

    def objective(z):
        norms.append(float((z.detach() - x).norm()))
        return (z * w).sum(dim=1)

    x = torch.zeros(1, 16)
    out = pgd_l2(objective, x, epsilon=1.0, num_steps=4, clip=None)
    assert norms == pytest.approx([0.0, 0.5, 1.0, 1.0], abs=1e-6)
    torch.testing.assert_close(out[0], w[0] / w.norm())


def test_pgd_l2_zero_gradient_takes_a_random_direction():
    x = torch.full((2, 4), 0.5)
    out = pgd_l2(lambda z: torch.zeros(len(z)) + 0 * z.sum(dim=1), x, epsilon=0.1, num_steps=1, clip=None,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((out - x).norm(dim=1), torch.full((2,), 0.1))


def test_smoothadv_loss_is_cross_entropy_at_the_attacked_points(digits):
    (x, y), _ = digits
    x, y = torch.from_numpy(x[:8]), torch.from_numpy(y[:8]).long()
    clf = _clf()
    trainer = SmoothAdvTrainer(clf, epsilon=0.5, num_steps=3, num_noise_vec=2, seed=3)
    trainer.epoch = 1
    loss = trainer.training_loss(x, y)
    replay = SmoothAdvTrainer(clf, epsilon=0.5, num_steps=3, num_noise_vec=2, seed=3)
    replay.epoch = 1
    noise = replay.draw_noise(x)
    x_adv = replay.adversary(x, y, noise)
    model = clf.model
    expected = torch.stack([nn.functional.cross_entropy(model(x_adv + noise[j]), y) for j in range(2)]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    # epsilon 0 is Gaussian augmentation on the m copies.
    zero = SmoothAdvTrainer(clf, epsilon=0.0, num_steps=1, num_noise_vec=2, seed=3)
    noise0 = SmoothAdvTrainer(clf, epsilon=0.0, num_steps=1, num_noise_vec=2, seed=3).draw_noise(x)
    plain = torch.stack([nn.functional.cross_entropy(model(x + noise0[j]), y) for j in range(2)]).mean()
    assert float(zero.training_loss(x, y).detach()) == pytest.approx(float(plain.detach()), rel=1e-5)


def test_smoothadv_warmup_chunks_and_training(digits):
    (x, y), _ = digits
    clf = _clf(lr=0.05)
    trainer = SmoothAdvTrainer(clf, epsilon=1.0, warmup=4, num_noise_vec=2)
    trainer.epoch = 1
    assert trainer.current_epsilon() == 0.25
    trainer.epoch = 6
    assert trainer.current_epsilon() == 1.0
    sizes = []
    handle = clf.model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    SmoothAdvTrainer(clf, num_steps=2, num_noise_vec=2).fit(x[:16], y[:16], batch_size=16, nb_epochs=1)
    handle.remove()
    assert sizes == [16] * (2 * 3)  # 2 optimizer steps on chunks of 8 x 2 draws: 2 attack passes + 1 loss pass
    losses = SmoothAdvTrainer(clf, epsilon=0.25, num_steps=2, sigma=0.25).fit(x, y, batch_size=64, nb_epochs=3)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="epsilon"):
        SmoothAdvTrainer(clf, epsilon=-1)
    with pytest.raises(ValueError, match="num_steps"):
        SmoothAdvTrainer(clf, num_steps=0)


# ---------------------------------------------------------------------------------------------------------------
# MACER
# ---------------------------------------------------------------------------------------------------------------
def _macer_by_hand(logits, y, sigma, lbd, gamma, beta, form):
    k, b, _ = logits.shape
    phi_inv = lambda p: math.sqrt(2) * torch.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)).item()  # noqa
    total_nll, total_hinge, correct_hinges = 0.0, 0.0, []
    for i in range(b):
        p = torch.softmax(logits[:, i].double(), dim=-1).mean(0)
        total_nll += -math.log(float(p[y[i]]) + 1e-10)
        q = torch.softmax(beta * logits[:, i].double(), dim=-1).mean(0) if form == "macer" else p
        top = torch.sort(q, descending=True)
        if int(top.indices[0]) != int(y[i]):
            continue
        s = sigma[i] if isinstance(sigma, list) else sigma
        if form == "macer":
            gap = phi_inv(float(top.values[0])) - phi_inv(float(top.values[1]))
            if gap <= gamma:
                total_hinge += s / 2 * (gamma - gap)
        else:
            a, c = (min(max(float(v), 0.02), 0.98) for v in top.values[:2])
            correct_hinges.append(max(0.0, gamma - s / 2 * (phi_inv(a) - phi_inv(c))))
    if form == "macer":
        return (total_nll + lbd * total_hinge) / b
    return total_nll / b + lbd * (sum(correct_hinges) / max(1, len(correct_hinges)))


@pytest.mark.parametrize("form", ["macer", "ddrs"])
def test_macer_loss_matches_the_formula(form):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 4, generator=gen) * 0.7
    y = logits.softmax(-1).mean(0).argmax(1)
    y[:2] = (y[:2] + 1) % 4  # two misclassified inputs: no hinge term for them
    got = macer_loss(logits, y, 0.5, lbd=3.0, gamma=1.5 if form == "macer" else 8.0, beta=2.0, form=form)
    expected = _macer_by_hand(logits, y, 0.5, 3.0, 1.5 if form == "macer" else 8.0, 2.0, form)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    sigmas = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    got = macer_loss(logits, y, torch.tensor(sigmas), lbd=3.0, gamma=8.0, beta=2.0, form=form)
    assert float(got) == pytest.approx(_macer_by_hand(logits, y, sigmas, 3.0, 8.0, 2.0, form), rel=1e-5)


def test_macer_confident_outputs_keep_finite_gradients():
    logits = torch.tensor([[[60.0, -60.0, 0.0]], [[60.0, -60.0, 0.0]]], requires_grad=True)
    for form in ("macer", "ddrs"):
        loss = macer_loss(logits, torch.tensor([0]), 0.5, lbd=12.0, gamma=8.0, beta=16.0, form=form)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_macer_trainer_forward_and_defaults(digits):
    (x, y), _ = digits
    clf = _clf(sigma=0.25, lr=0.05)
    trainer = MACERTrainer(clf, num_noise_vec=4)
    assert (trainer.lbd, trainer.gamma, trainer.beta) == (12.0, 8.0, 16.0)
    assert MACERTrainer(_clf(sigma=1.0)).lbd == 4.0
    sizes = []
    # ART's wrapper calls a Sequential's layers one by one: hook the first layer.
    handle = clf.model[0].register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    losses = trainer.fit(x[:256], y[:256], batch_size=64, nb_epochs=4)
    handle.remove()
    assert sizes[:4] == [64 * 4] * 4  # one step per batch on the k noisy copies
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="form"):
        MACERTrainer(clf, form="tempered")
    with pytest.raises(ValueError, match="lbd"):
        MACERTrainer(clf, lbd=-1)


# ---------------------------------------------------------------------------------------------------------------
# Certified robustness transfer (spec C.5)
# ---------------------------------------------------------------------------------------------------------------
class BNNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def test_transfer_loss_is_the_mean_unsquared_l2_of_logit_gaps():
    zs = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    zt = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    assert float(transfer_loss(zs, zt)) == pytest.approx((math.sqrt(8) + 5.0) / 2)
    assert float(transfer_loss(zt + 2 * (zs - zt), zt)) == pytest.approx(2 * float(transfer_loss(zs, zt)))
    assert float(transfer_loss(zt, zt)) == 0.0


def test_copy_of_the_teacher_has_zero_loss_whatever_the_noise(digits):
    (x, y), _ = digits
    teacher = BNNet(1).eval()
    student = BNNet(2)
    student.load_state_dict(teacher.state_dict())
    trainer = CRTTrainer(_clf(student), teacher, seed=4)
    student.eval()  # a BatchNorm student matches its teacher in eval mode
    noisy = torch.from_numpy(x[:16]) + 0.5
    with torch.no_grad():
        assert float(transfer_loss(trainer._classifier.logits(noisy), trainer.teacher_forward(noisy))) == 0.0


def test_teacher_sees_the_same_noisy_input_and_is_left_untouched(digits):
    (x, y), _ = digits
    teacher = BNNet(1)
    teacher.train()
    for _ in range(3):  # give the running stats something to change from
        teacher(torch.randn(32, 1, 8, 8))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = {}
    teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0].clone()))
    student = _mlp(3)
    student[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0].clone()))  # see above
    clf = _clf(student)
    CRTTrainer(clf, teacher, seed=0).fit(x[:32], y[:32], batch_size=32, nb_epochs=1)
    assert torch.equal(seen["teacher"], seen["student"]) and not torch.equal(seen["student"], torch.zeros(1))
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running stats unchanged
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_smoothed_classifier_teacher_uses_its_own_preprocessing():
    teacher_model = _mlp(1)
    teacher = make_classifier(teacher_model, (1, 8, 8), 10, scale=0.5, preprocessing=(0.5, 0.25))
    trainer = CRTTrainer(_clf(_mlp(2)), teacher)
    z = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(trainer.teacher_forward(z), teacher_model((z - 0.5) / 0.25))


def test_labels_unused_at_weight_one_and_cross_entropy_at_zero(digits):
    (x, y), _ = digits
    x, y = torch.from_numpy(x[:16]), torch.from_numpy(y[:16]).long()
    teacher = _mlp(1)

    def grads(weight, labels):
        student = _mlp(2)
        trainer = CRTTrainer(_clf(student), teacher, transfer_weight=weight, seed=7)
        trainer.training_loss(x, labels).backward()
        return torch.cat([p.grad.flatten() for p in student.parameters()])

    torch.testing.assert_close(grads(1.0, y), grads(1.0, y[torch.randperm(16)]))
    student = _mlp(2)
    trainer = CRTTrainer(_clf(student), teacher, transfer_weight=0.0, seed=7)
    loss = trainer.training_loss(x, y)
    noise = CRTTrainer(_clf(_mlp(2)), teacher, seed=7).draw_noise(x, m=1)[0]
    expected = nn.functional.cross_entropy(student(x + noise), y)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_learning_rate_drops_at_half_and_three_quarters_of_the_iterations(digits):
    (x, y), _ = digits
    student = _mlp(2)
    clf = _clf(student, lr=0.1)
    trainer = CRTTrainer(clf, _mlp(1), total_epochs=4)
    lrs = []
    step = clf.optimizer.step
    clf.optimizer.step = lambda *a, **k: (lrs.append(clf.optimizer.param_groups[0]["lr"]), step(*a, **k))[1]
    trainer.fit(x[:80], y[:80], batch_size=16, nb_epochs=4)  # 5 steps per epoch, 20 in all
    assert lrs == pytest.approx([0.1] * 10 + [0.01] * 5 + [0.001] * 5)
    assert trainer.owns_lr_schedule and not CRTTrainer(_clf(_mlp(3)), _mlp(1), lr_schedule=False).owns_lr_schedule
    with pytest.raises(ValueError, match="scheduler"):
        trainer.fit(x[:16], y[:16], nb_epochs=1, scheduler=SimpleNamespace(step=lambda: None))


def test_distillation_transfers_the_teachers_noisy_predictions():
    # 2-D toy: a teacher trained with noise, a fresh student distilled with L_CRT only.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(512, 2, generator=gen)
    y = (x[:, 0] + x[:, 1] > 1).long()

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))

    def clf(model):
        return make_classifier(model, (2,), 2, scale=0.25, optimizer=torch.optim.Adam(model.parameters(), 1e-2),
                               sample_size=400)

    from art_some import GaussianAugmentationTrainer

    teacher = clf(net(0))
    GaussianAugmentationTrainer(teacher, seed=0).fit(x.numpy(), y.numpy(), batch_size=64, nb_epochs=30)
    student = clf(net(1))
    CRTTrainer(student, teacher, seed=1).fit(x.numpy(), y.numpy(), batch_size=64, nb_epochs=40)
    z = x[:200] + 0.25 * torch.randn(200, 2, generator=gen)
    with torch.no_grad():
        agree = (teacher.model(z).argmax(1) == student.model(z).argmax(1)).float().mean()
    assert float(agree) > 0.95
    points = np.array([[0.2, 0.3], [0.8, 0.7], [0.4, 0.9], [0.6, 0.2]], dtype=np.float32)
    pa_teacher = teacher.predict_counts(points, n=4000).max(axis=1) / 4000
    pa_student = student.predict_counts(points, n=4000).max(axis=1) / 4000
    assert np.abs(pa_teacher - pa_student).max() < 0.05


def test_crt_arguments_and_checkpoint_teacher(tmp_path):
    from art_some.models import create_model, save_checkpoint

    clf = _clf()
    with pytest.raises(ValueError, match="transfer_weight"):
        CRTTrainer(clf, _mlp(1), transfer_weight=1.5)
    with pytest.raises(ValueError, match="milestones"):
        CRTTrainer(clf, _mlp(1), milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="different networks"):
        CRTTrainer(clf, clf.model)
    with pytest.raises(ValueError, match="teacher"):
        CRTTrainer(clf, 3)
    torch.manual_seed(0)
    teacher = create_model("digits_cnn", num_classes=10)
    save_checkpoint(tmp_path / "t.safetensors", teacher, "digits_cnn", {"num_classes": 10})
    trainer = CRTTrainer(clf, str(tmp_path / "t.safetensors"))
    z = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(trainer.teacher_forward(z), teacher.eval()(z))
