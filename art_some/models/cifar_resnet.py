"""
ResNets for 32x32 inputs in the form used by the randomized-smoothing literature (He et al.'s CIFAR ResNets of
depth 6k+2 with basic blocks: ResNet-20, ResNet-110 as in Cohen et al., Consistency, SmoothMix and SOME).

| Paper link: https://arxiv.org/abs/1512.03385
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    """k for a CIFAR ResNet of depth 6k+2."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"depth must be 6k+2 with k >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
    return (depth - 2) // 6


def stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; the first changes width and stride."""
    return nn.Sequential(*[BasicBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1)
                           for b in range(blocks)])


def init_convs(module: nn.Module) -> None:
    """He initialisation N(0, 2 / (k * k * out_channels)) of every convolution, as the CIFAR ResNets use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class CifarResNet(nn.Module):
    """
    CIFAR ResNet of depth 6k+2: a 16-channel stem, three stages of k blocks (16, 32, 64 channels), global
    average pooling and a linear classifier.

    :param depth: 20, 32, 44, 56, 110, ... (6k+2).
    :param num_classes: Output classes.
    :param in_channels: Input channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        blocks = blocks_per_stage(depth)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = stage(16, 16, blocks, stride=1)
        self.layer2 = stage(16, 32, blocks, stride=2)
        self.layer3 = stage(32, 64, blocks, stride=2)
        self.fc = nn.Linear(64, num_classes)
        init_convs(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 64-dimensional features."""
        out = self.layer3(self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x))))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
