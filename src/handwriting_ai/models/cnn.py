"""Compact CNNs for 28x28 digits: cheap to train on two CPU cores, about a millisecond at batch 1.

Only one layer runs at full 28x28 resolution: on a CPU the cost is dominated by full-resolution
activations, not by parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from handwriting_ai.models.registry import register_model


def _block(c_in: int, c_out: int, k: int = 3, stride: int = 1, pad: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class DigitNet(nn.Module):
    """conv, pool, conv-conv, pool, conv-conv, global pool, linear; `width` scales every layer."""

    def __init__(self, width: int = 16, dropout: float = 0.2, n_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(1, w),
            nn.MaxPool2d(2),
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class DeepDigitNet(nn.Module):
    """Two 3x3 convs at each of three resolutions, strided 5x5 convs between them, a 4x4 conv to
    a vector (after Deotte's Kaggle MNIST study): three times DigitNet's compute, 0.2 ms."""

    def __init__(self, width: int = 32, dropout: float = 0.3, n_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(  # unpadded 3x3 convs: 28 -> 26 -> 24, 12 -> 10 -> 8
            *_block(1, w, pad=0),
            *_block(w, w, pad=0),
            *_block(w, w, 5, 2, 2),  # 12
            nn.Dropout(dropout),
            *_block(w, 2 * w, pad=0),
            *_block(2 * w, 2 * w, pad=0),
            *_block(2 * w, 2 * w, 5, 2, 2),  # 4
            nn.Dropout(dropout),
            *_block(2 * w, 4 * w, 4, pad=0),  # 1
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


@register_model("digitnet")
def digitnet() -> nn.Module:
    return DigitNet(width=16)


@register_model("digitnet_wide")
def digitnet_wide() -> nn.Module:
    return DigitNet(width=32)


@register_model("digitnet_deep")
def digitnet_deep() -> nn.Module:
    return DeepDigitNet(width=32)


@register_model("digitnet_tiny")
def digitnet_tiny() -> nn.Module:
    """For tests: trains in well under a second on a few hundred images."""
    return DigitNet(width=4, dropout=0.0)
