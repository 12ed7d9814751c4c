"""Test-time augmentation views, built as one batch so each member runs one forward pass."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.nn import functional

TtaProfile = Literal["none", "strong"]

# (dx_px, dy_px, rotation_deg, scale); the identity view comes first.
_STRONG: tuple[tuple[float, float, float, float], ...] = (
    (0, 0, 0, 1.0),
    (1, 0, 0, 1.0),
    (-1, 0, 0, 1.0),
    (0, 1, 0, 1.0),
    (0, -1, 0, 1.0),
    (0, 0, 8, 1.0),
    (0, 0, -8, 1.0),
    (0, 0, 0, 0.9),
    (0, 0, 0, 1.1),
)


def view_count(profile: TtaProfile) -> int:
    return len(_STRONG) if profile == "strong" else 1


def tta_batch(x: torch.Tensor, profile: TtaProfile, *, background: float) -> torch.Tensor:
    """(1, 1, H, W) -> (V, 1, H, W). `background` fills the area a shift or rotation uncovers."""
    if profile == "none":
        return x
    _, _, h, w = x.shape
    thetas = []
    for dx, dy, deg, scale in _STRONG:
        rad = math.radians(deg)
        cos, sin = math.cos(rad) / scale, math.sin(rad) / scale
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
        thetas.append([[cos, -sin, -2 * dx / w], [sin, cos, -2 * dy / h]])
    theta = torch.tensor(thetas, dtype=x.dtype)
    grid = functional.affine_grid(theta, [len(_STRONG), 1, h, w], align_corners=False)
    shifted = (x - background).expand(len(_STRONG), -1, -1, -1)
    return (
        functional.grid_sample(
            shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        + background
    )
