"""SOME's multi-head network, cosine constraint and smoothed classifier (spec some.md, section 9)."""
import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent

from art_some import MultiHeadSmoothedClassifier
from art_some.core.stats import max_certifiable_radius
from art_some.models import MultiHeadNet, cosine_loss, create_model
from art_some.models.multihead import cifar_resnet_multihead, single_head_twin


def test_shapes_shared_trunk_and_separate_heads():
    net = cifar_resnet_multihead(depth=20, num_heads=3)
    outs = net.head_logits(torch.zeros(2, 3, 32, 32))
    assert len(outs) == 3 and all(o.shape == (2, 10) for o in outs)
    assert torch.allclose(net(torch.zeros(2, 3, 32, 32)), sum(outs))
    shapes = [[p.shape for p in h.parameters()] for h in net.heads]
    assert shapes[0] == shapes[1] == shapes[2]
    ptrs = [{p.data_ptr() for p in h.parameters()} for h in net.heads]
    assert not (ptrs[0] & ptrs[1]) and not (ptrs[1] & ptrs[2])


def test_resnet110_costs_and_cosine_at_init_match_the_spec():
    torch.manual_seed(0)
    net = create_model("some_cifar_resnet110", num_heads=5)
    trunk = sum(p.numel() for p in net.trunk.parameters())
    head = sum(p.numel() for p in net.heads[0].parameters())
    assert round(trunk / 1e6, 3) == 0.415 and round(head / 1e6, 3) == 1.316
    assert float(net.cosine_loss().detach()) == pytest.approx(1.15, abs=0.01)


def test_cosine_loss_properties():
    eye = torch.eye(4)
    assert float(cosine_loss([eye[i] for i in range(4)])) == pytest.approx(0.0)
    v = torch.randn(7)
    assert float(cosine_loss([v, v, v, v])) == pytest.approx(6.0)  # M(M-1)/2 with M = 4
    a, b, c = torch.randn(3, 9)
    assert float(cosine_loss([a, b, c])) == pytest.approx(float(cosine_loss([5 * a, b, 0.1 * c])), rel=1e-5)


def test_cosine_loss_reaches_heads_only():
    net = create_model("some_digits_cnn", num_heads=3)
    net.cosine_loss().backward()
    assert all(p.grad is None for p in net.trunk.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for h in net.heads for p in h.parameters())


def make(net, **kw):
    kw.setdefault("device_type", "cpu")
    return MultiHeadSmoothedClassifier(net, torch.nn.CrossEntropyLoss(), (4,), 3, **kw)


class FixedHeads(MultiHeadNet):
    """Heads returning given constant logits (for checking the aggregation rule)."""

    def __init__(self, logits):
        heads = [torch.nn.Linear(4, 3) for _ in logits]
        super().__init__(torch.nn.Identity(), heads)
        self.fixed = [torch.tensor(v, dtype=torch.float32) for v in logits]

    def head_logits(self, x):
        return [f.expand(len(x), -1) + 0 * h(x) for f, h in zip(self.fixed, self.heads)]


def test_vote_is_argmax_of_summed_logits():
    x = np.zeros((1, 4), np.float32)
    # Per-head votes would be 0, 0, 1 (majority 0); the summed logits pick class 1.
    clf = make(FixedHeads([[1.0, 0.9, 0], [1.0, 0.9, 0], [0, 3.0, 0]]), scale=0.1)
    assert clf.predict(x, output="onehot")[0].tolist() == [0, 1, 0]
    # Changing one head's logits flips the vote.
    clf = make(FixedHeads([[1.0, 0.9, 0], [1.0, 0.9, 0], [0, 0.1, 0]]), scale=0.1)
    assert clf.predict(x, output="onehot")[0].tolist() == [1, 0, 0]


def test_constant_classifier_reaches_the_radius_cap_and_split_votes_abstain():
    x = np.zeros((1, 4), np.float32)
    clf = make(FixedHeads([[0, 1.0, 0], [0, 1.0, 0]]), scale=0.5, sample_size=100)
    pred, radius = clf.certify(x, n=100_000)
    assert pred[0] == 1 and radius[0] == pytest.approx(max_certifiable_radius(0.5, 100_000, 0.001))
    assert radius[0] == pytest.approx(3.811 * 0.5, abs=1e-3)

    class Coin(MultiHeadNet):
        def head_logits(self, x):
            s = x.sum(dim=1, keepdim=True)
            return [torch.cat([s, -s, 0 * s], dim=1)]

    coin = make(Coin(torch.nn.Identity(), [torch.nn.Linear(1, 1)]), scale=1.0, sample_size=100)
    pred, radius = coin.certify(x, n=2000)
    assert pred[0] == -1 and radius[0] == 0.0


def test_requires_a_multi_head_model():
    with pytest.raises(ValueError, match="head_logits"):
        make(torch.nn.Linear(4, 3))


def test_art_attack_and_head_logits_on_a_multihead_digits_model(digits):
    _, (x, y) = digits
    torch.manual_seed(0)
    net = create_model("some_digits_cnn", num_heads=3)
    clf = MultiHeadSmoothedClassifier(net, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu",
                                      clip_values=(0, 1), scale=0.25, gradient_samples=8)
    assert clf.num_heads == 3
    heads = clf.head_logits(torch.from_numpy(x[:2]))
    assert len(heads) == 3 and heads[0].shape == (2, 10)
    x_adv = ProjectedGradientDescent(clf, norm=2, eps=1.0, eps_step=0.5, max_iter=2, verbose=False).generate(x[:3])
    assert x_adv.shape == x[:3].shape and np.all(np.isfinite(x_adv))
    twin = single_head_twin(net)
    assert twin.num_heads == 1 and torch.allclose(twin(torch.from_numpy(x[:2])), heads[0].detach(), atol=1e-5)
