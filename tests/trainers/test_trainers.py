import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from art_some.models import DigitsCNN
from art_some.trainers import ConsistencyTrainer, GaussianAugmentationTrainer
from art_some.trainers.consistency import consistency_loss
from tests.conftest import make_classifier


def fresh_classifier(seed=0, lr=1e-3):
    torch.manual_seed(seed)
    model = DigitsCNN()
    return make_classifier(model, (1, 8, 8), 10, optimizer=torch.optim.Adam(model.parameters(), lr), scale=0.25)


def test_gaussian_training_learns_the_noisy_task(digits):
    (x, y), (xt, yt) = digits
    clf = fresh_classifier(lr=3e-3)
    history = GaussianAugmentationTrainer(clf, seed=0).fit(x, y, batch_size=64, nb_epochs=6)
    assert history[-1] < history[0]
    votes = clf.predict(xt[:100])
    assert np.mean(votes.argmax(1) == yt[:100]) > 0.8


def test_training_is_deterministic(digits):
    (x, y), _ = digits
    a, b = fresh_classifier(), fresh_classifier()
    ha = GaussianAugmentationTrainer(a, seed=5).fit(x[:256], y[:256], nb_epochs=1)
    hb = GaussianAugmentationTrainer(b, seed=5).fit(x[:256], y[:256], nb_epochs=1)
    assert ha == hb


def test_dataloader_path(digits):
    (x, y), _ = digits
    clf = fresh_classifier()
    loader = DataLoader(TensorDataset(torch.from_numpy(x[:256]), torch.from_numpy(y[:256])), batch_size=64)
    history = ConsistencyTrainer(clf, seed=0).fit(loader, nb_epochs=2)
    assert len(history) == 2 and all(np.isfinite(history))
    with pytest.raises(ValueError, match="y must be None"):
        ConsistencyTrainer(clf).fit(loader, y[:256])


def reference_consistency(logits, y, lbd, eta):
    """Jeong & Shin's formulation with torch's KL: CE over all copies + lbd * KL(p_bar || p_j) + eta * H(p_bar)."""
    m = logits.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(m))
    p_bar = F.softmax(logits, dim=2).mean(0)
    kl = sum(F.kl_div(F.log_softmax(logits[j], 1), p_bar, reduction="batchmean") for j in range(m)) / m
    ent = -(p_bar * torch.log(p_bar.clamp_min(1e-20))).sum(1).mean()
    return ce + lbd * kl + eta * ent


def test_consistency_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=g)
    ours = consistency_loss(logits, y, 10.0, 0.5)
    ref = reference_consistency(logits, y, 10.0, 0.5)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    # p_bar keeps its gradient (Jeong & Shin), so the entropy term moves the logits.
    (grad,) = torch.autograd.grad(consistency_loss(logits, y, 0.0, 1.0) - consistency_loss(logits, y, 0.0, 0.0),
                                  logits)
    assert grad.abs().sum() > 0


def test_consistency_reduces_to_cross_entropy():
    logits = torch.randn(2, 4, 3)
    y = torch.tensor([0, 1, 2, 0])
    assert float(consistency_loss(logits, y, 0.0, 0.0)) == pytest.approx(
        float(F.cross_entropy(logits.reshape(-1, 3), y.repeat(2))), rel=1e-6)
    # Identical copies have zero KL.
    same = torch.randn(1, 4, 3).repeat(2, 1, 1)
    assert float(consistency_loss(same, y, 5.0, 0.0)) == pytest.approx(float(F.cross_entropy(same[0], y)), rel=1e-6)


def test_consistency_copies_are_aligned_with_labels():
    # Chunk j of the repeated batch holds copy j of every sample, so each copy keeps its own label.
    seen = {}

    class Record(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x.detach().clone()
            return torch.zeros(len(x), 2, requires_grad=True) + x.flatten(1)[:, :2] * 0

    model = Record()
    clf = make_classifier(model, (2,), 2, optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                          scale=1e-6, clip_values=None)
    trainer = ConsistencyTrainer(clf, num_noise_vec=3)
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    trainer.training_loss(x, torch.tensor([0, 1]))
    assert torch.allclose(seen["x"].view(3, 2, 2), x.expand(3, 2, 2), atol=1e-4)


def test_trainer_argument_errors(digits):
    (x, y), _ = digits
    model = DigitsCNN()
    with pytest.raises(ValueError, match="optimizer"):
        GaussianAugmentationTrainer(make_classifier(model, (1, 8, 8), 10))
    clf = fresh_classifier()
    with pytest.raises(ValueError, match="num_noise_vec"):
        ConsistencyTrainer(clf, num_noise_vec=0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianAugmentationTrainer(clf, sigma=-1)
    with pytest.raises(ValueError, match="nb_epochs"):
        GaussianAugmentationTrainer(clf).fit(x, y, nb_epochs=0)
    with pytest.raises(ValueError, match="length"):
        GaussianAugmentationTrainer(clf).fit(x, y[:-1])


def test_a_loader_without_length_trains(digits):
    # An IterableDataset has no len(): only per-iteration schedules (CRT's) need it.
    from torch.utils.data import DataLoader, IterableDataset

    (x, y), _ = digits

    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(torch.from_numpy(x[i]), int(y[i])) for i in range(64)])

    model = DigitsCNN()
    clf = make_classifier(model, (1, 8, 8), 10, scale=0.25, optimizer=torch.optim.Adam(model.parameters(), 1e-3))
    losses = GaussianAugmentationTrainer(clf).fit(DataLoader(Stream(), batch_size=16), nb_epochs=2)
    assert len(losses) == 2 and np.isfinite(losses).all()
