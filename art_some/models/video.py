"""
Video classifiers for temporal-window smoothing: a clip model that averages logits over fixed-length chunks
(the Smooth-Reduce video setting, after the MARS 3D ResNeXt with 16-frame clips), and a tiny 3D CNN for tests.
"""
from __future__ import annotations

import torch
from torch import nn


class ChunkAveragedClip(nn.Module):
    """
    Score a clip ``(B, C, T, H, W)`` by splitting it into ``T // chunk`` consecutive chunks of ``chunk`` frames
    (stride = chunk, trailing frames that do not fill a chunk are left out, as in the official code), running
    ``model`` on all chunks in one forward pass and averaging their logits.

    :param model: A clip classifier on ``(B, C, chunk, H, W)``.
    :param chunk: Frames per chunk (16 or 8 in the paper).
    """

    def __init__(self, model: nn.Module, chunk: int):
        super().__init__()
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.model = model
        self.chunk = int(chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"a clip must be (B, C, T, H, W), got shape {tuple(x.shape)}")
        chunks = x.shape[2] // self.chunk
        if chunks == 0:
            raise ValueError(f"a clip of {x.shape[2]} frames is shorter than one chunk of {self.chunk}")
        frames = x[:, :, : chunks * self.chunk]
        pieces = frames.unflatten(2, (chunks, self.chunk)).movedim(2, 1).flatten(0, 1)  # (B * chunks, C, chunk, H, W)
        return self.model(pieces).unflatten(0, (x.shape[0], chunks)).mean(dim=1)


class TinyVideoCNN(nn.Module):
    """A two-layer 3D CNN with global pooling for quick tests on ``(B, C, T, H, W)`` clips of any size."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
