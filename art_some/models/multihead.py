"""
Multi-head networks for SOME (smoothed multi-head ensembles): a shared trunk and M heads whose logits are summed.

``forward`` returns the summed logits, so the network is an ordinary classifier inside ART; the heads' own
logits come from :meth:`MultiHeadNet.head_logits`, and :meth:`MultiHeadNet.cosine_loss` is the paper's
squared-cosine constraint between the heads' parameter vectors.

| Paper link: https://arxiv.org/abs/2211.10882
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from art_some.models.cifar_resnet import blocks_per_stage, init_convs, stage


class MultiHeadNet(nn.Module):
    """
    A shared trunk followed by M heads with identical shapes and separate parameters.

    :param trunk: The shared module (one pass per input).
    :param heads: The M head modules, each mapping trunk features to logits.
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        if len(heads) < 1:
            raise ValueError("a MultiHeadNet needs at least one head")
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def head_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The M heads' logits, ``[B, C]`` each, from one trunk pass."""
        features = self.trunk(x)
        return [head(features) for head in self.heads]

    def forward(self, x: torch.Tensor, per_head: bool = False):
        """
        Summed head logits (the official code's aggregation: argmax of the sum is the ensemble's vote), or with
        ``per_head=True`` the list of head logits (the route trainers take, so that a DistributedDataParallel
        wrapper sees the forward pass and synchronises the gradients).
        """
        if per_head:
            return self.head_logits(x)
        return torch.stack(self.head_logits(x)).sum(dim=0)

    def head_vectors(self) -> list[torch.Tensor]:
        """Each head's trainable parameters flattened into one vector (BN running statistics excluded)."""
        return [torch.cat([p.reshape(-1) for p in head.parameters() if p.requires_grad]) for head in self.heads]

    def cosine_loss(self) -> torch.Tensor:
        """Sum over head pairs i < j of cos^2(theta_i, theta_j); gradients reach the heads only."""
        return cosine_loss(self.head_vectors())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def cosine_loss(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """
    SOME's constraint: the sum over pairs i < j of the squared cosine between ``vectors[i]`` and ``vectors[j]``
    (0 for mutually orthogonal vectors, M(M-1)/2 for parallel ones; invariant to rescaling any vector).
    """
    unit = torch.stack([v / v.norm() for v in vectors])
    cos = unit @ unit.T
    return torch.triu(cos, diagonal=1).pow(2).sum()


def _heads(make_head: Callable[[], nn.Module], num_heads: int) -> list[nn.Module]:
    if int(num_heads) != num_heads or num_heads < 1:
        raise ValueError(f"num_heads must be an integer >= 1, got {num_heads!r}")
    return [make_head() for _ in range(int(num_heads))]


def cifar_resnet_multihead(depth: int = 110, num_heads: int = 5, num_classes: int = 10, in_channels: int = 3):
    """
    SOME's CIFAR ResNet: trunk = stem + layer1 + layer2 (shared), head = its own layer3 + pooling + linear.

    :param depth: 6k+2 (20 or 110 in the paper's code).
    :param num_heads: M (5 in every released command).
    :param num_classes: Classes.
    :param in_channels: Input channels.
    """
    blocks = blocks_per_stage(depth)
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        stage(16, 16, blocks, stride=1), stage(16, 32, blocks, stride=2),
    )

    def make_head():
        return nn.Sequential(stage(32, 64, blocks, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(64, num_classes))

    net = MultiHeadNet(trunk, _heads(make_head, num_heads))
    init_convs(net)
    return net


def resnet50_multihead(num_heads: int = 5, num_classes: int = 1000):
    """SOME's ImageNet ResNet-50 from torchvision's: trunk = stem + layer1-3, head = its own layer4 + fc."""
    import torchvision

    base = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    trunk = nn.Sequential(base.conv1, base.bn1, base.relu, base.maxpool, base.layer1, base.layer2, base.layer3)

    def make_head():
        fresh = torchvision.models.resnet50(weights=None, num_classes=num_classes)
        return nn.Sequential(fresh.layer4, fresh.avgpool, nn.Flatten(), fresh.fc)

    return MultiHeadNet(trunk, _heads(make_head, num_heads))


def digits_cnn_multihead(num_heads: int = 5, num_classes: int = 10, in_channels: int = 1, width: int = 16):
    """A small multi-head CNN for 8x8 digits: trunk = first convolution, head = the rest of DigitsCNN."""
    trunk = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())

    def make_head():
        return nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    return MultiHeadNet(trunk, _heads(make_head, num_heads))


def single_head_twin(net: MultiHeadNet) -> MultiHeadNet:
    """The same architecture with one head (a copy of head 0): the single-network baseline."""
    return MultiHeadNet(copy.deepcopy(net.trunk), [copy.deepcopy(net.heads[0])])
