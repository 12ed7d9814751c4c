"""Batched augmentation on tensors (affine, morphology, blur, dots, salt/pepper).

Applied to whole batches in pixel space ([0, 1], ink = 1) so that it costs a small fraction of a
training step; every random draw comes from the caller's generator, so a seed fixes the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from handwriting_ai.training.config import AugmentConfig


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def _chosen(n: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) < prob).view(n, 1, 1, 1)


def _affine(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    rot = torch.deg2rad(_uniform(n, -cfg.rotate_deg, cfg.rotate_deg, gen))
    shear = torch.deg2rad(_uniform(n, -cfg.shear_deg, cfg.shear_deg, gen))
    scale = _uniform(n, 1 - cfg.scale, 1 + cfg.scale, gen)
    tx = _uniform(n, -cfg.shift_px, cfg.shift_px, gen) * 2 / w
    ty = _uniform(n, -cfg.shift_px, cfg.shift_px, gen) * 2 / h
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
    theta = torch.stack(
        [
            torch.stack([cos / scale, (-sin + tan * cos) / scale, tx], dim=1),
            torch.stack([sin / scale, (cos + tan * sin) / scale, ty], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _on_some(
    x: torch.Tensor,
    prob: float,
    gen: torch.Generator,
    change: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`change` applied to a random `prob` share of the batch, computed on those samples only
    (most ops touch a small share: computing them for all and selecting cost more than training)."""
    picked = (torch.rand(x.shape[0], generator=gen) < prob).nonzero().squeeze(1)
    if picked.numel() == 0:
        return x
    return x.index_copy(0, picked, change(x.index_select(0, picked)))


def _morph(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    def change(some: torch.Tensor) -> torch.Tensor:
        dilated = F.max_pool2d(some, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-some, 3, stride=1, padding=1)
        if cfg.morph == "dilate":
            changed = dilated
        elif cfg.morph == "erode":
            changed = eroded
        else:
            changed = torch.where(_chosen(some.shape[0], 0.5, gen), dilated, eroded)
        # A 3x3 max is too strong on 28x28 strokes: blend halfway, like a lighter or heavier pen.
        return 0.5 * (some + changed)

    return _on_some(x, cfg.morph_prob, gen, change)


def _blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    radius = max(1, math.ceil(2 * cfg.blur_sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k1 = torch.exp(-(t**2) / (2 * cfg.blur_sigma**2))
    k1 = k1 / k1.sum()
    # A Gaussian is separable: a row pass and a column pass.
    rows, cols = k1.view(1, 1, 1, -1), k1.view(1, 1, -1, 1)

    def change(some: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(some, rows, padding=(0, radius)), cols, padding=(radius, 0))

    return _on_some(x, cfg.blur_prob, gen, change)


def _dots(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    _, _, h, w = x.shape
    size = max(1, cfg.dots_size_px)

    def change(some: torch.Tensor) -> torch.Tensor:
        m = some.shape[0]
        seeds = torch.zeros(m, h * w)
        seeds.scatter_(1, torch.randint(0, h * w, (m, cfg.dots_count), generator=gen), 1.0)
        dots = F.max_pool2d(seeds.view(m, 1, h, w), size, stride=1, padding=size // 2)
        return torch.maximum(some, dots[..., :h, :w])

    return _on_some(x, cfg.dots_prob, gen, change)


def _salt_pepper(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    def change(some: torch.Tensor) -> torch.Tensor:
        hit = torch.rand(some.shape, generator=gen) < cfg.noise_amount
        salt = torch.rand(some.shape, generator=gen) < 0.5
        return torch.where(hit, salt.to(some.dtype), some)

    return _on_some(x, cfg.noise_prob, gen, change)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(N, 1, 28, 28) pixels in [0, 1] -> augmented pixels in [0, 1]."""
    if not cfg.enabled:
        return x
    if cfg.rotate_deg or cfg.scale or cfg.shift_px or cfg.shear_deg:
        x = _affine(x, cfg, gen)
    if cfg.morph_prob > 0 and cfg.morph != "none":
        x = _morph(x, cfg, gen)
    if cfg.blur_prob > 0 and cfg.blur_sigma > 0:
        x = _blur(x, cfg, gen)
    if cfg.dots_prob > 0 and cfg.dots_count > 0:
        x = _dots(x, cfg, gen)
    if cfg.noise_prob > 0 and cfg.noise_amount > 0:
        x = _salt_pepper(x, cfg, gen)
    return x.clamp_(0.0, 1.0)
