import os
import warnings

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*Gaussian noise will be added.*")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
# The published certification logs the tests read, carried in the project (see its README for provenance).
PUBLISHED_LOGS = os.path.join(os.path.dirname(__file__), "data", "published_logs")


class Linear2(torch.nn.Module):
    """Binary linear classifier with logits (0, w.x + b): the smoothed classifier has an exact radius."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32).flatten(), requires_grad=False)
        self.b = float(b)

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


def make_classifier(model, input_shape, nb_classes, **kwargs):
    from art_some import SmoothedClassifier

    kwargs.setdefault("device_type", "cpu")
    kwargs.setdefault("clip_values", (0.0, 1.0))
    return SmoothedClassifier(model, torch.nn.CrossEntropyLoss(), input_shape, nb_classes, **kwargs)


@pytest.fixture(scope="session")
def digits():
    from art_some.data import digits_arrays

    return digits_arrays("train"), digits_arrays("test")


@pytest.fixture(scope="session")
def trained_digits_classifier(digits):
    """A DigitsCNN trained for a few epochs with Gaussian noise (sigma 0.25); shared, do not train further."""
    from art_some.models import DigitsCNN
    from art_some.trainers import GaussianAugmentationTrainer

    (x, y), _ = digits
    torch.manual_seed(0)
    model = DigitsCNN()
    clf = make_classifier(model, (1, 8, 8), 10, optimizer=torch.optim.Adam(model.parameters(), 1e-3), scale=0.25,
                          sample_size=32, noise_batch_size=2000)
    GaussianAugmentationTrainer(clf, seed=0).fit(x, y, batch_size=64, nb_epochs=8)
    return clf


@pytest.fixture
def rng():
    return np.random.default_rng(0)
