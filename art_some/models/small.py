"""Small convolutional networks for the embedded digits data and quick experiments."""
from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """
    A small CNN for 1x8x8 inputs (scikit-learn's digits): two 3x3 convolutions and two linear layers,
    about 80k parameters; trains in seconds on a CPU.

    :param num_classes: Output classes.
    :param in_channels: Input channels.
    :param width: Channels of the first convolution (the second has twice as many).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
