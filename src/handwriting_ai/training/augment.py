"""Batched augmentation on tensors (affine, elastic, morphology, blur, dots, salt/pepper).

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


def _affine_grid(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
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
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


def _gaussian_1d(sigma: float, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum(), radius


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, 1, H, W): separable, a row pass then a column pass."""
    k, radius = _gaussian_1d(sigma, x.dtype)
    rows = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(rows, k.view(1, 1, -1, 1), padding=(radius, 0))


def _elastic(grid: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Simard-style elastic distortion: a random displacement field, smoothed so that nearby
    pixels move together (a wobble of the pen, not noise), scaled to `elastic_px` RMS."""
    n, h, w, _ = grid.shape
    picked = (torch.rand(n, generator=gen) < cfg.elastic_prob).nonzero().squeeze(1)
    if picked.numel() == 0:
        return grid
    m = picked.numel()
    field = _smooth(torch.rand(m * 2, 1, h, w, generator=gen) * 2 - 1, cfg.elastic_sigma)
    field = field / field.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    # Pixels to grid units ([-1, 1] spans the side).
    offset = field.view(m, 2, h, w).permute(0, 2, 3, 1) * (2 * cfg.elastic_px / max(h, w))
    return grid.index_add(0, picked, offset)


def _warp(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Affine and elastic in one resampling (each resampling softens the strokes)."""
    n, _, h, w = x.shape
    if cfg.rotate_deg or cfg.scale or cfg.shift_px or cfg.shear_deg:
        grid = _affine_grid(x, cfg, gen)
    else:
        identity = torch.eye(2, 3, dtype=x.dtype).expand(n, 2, 3)
        grid = F.affine_grid(identity, [n, 1, h, w], align_corners=False)
    if cfg.elastic_prob > 0 and cfg.elastic_px > 0:
        grid = _elastic(grid, cfg, gen)
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
    return _on_some(x, cfg.blur_prob, gen, lambda some: _smooth(some, cfg.blur_sigma))


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
    if cfg.rotate_deg or cfg.scale or cfg.shift_px or cfg.shear_deg or cfg.elastic_prob:
        x = _warp(x, cfg, gen)
    if cfg.morph_prob > 0 and cfg.morph != "none":
        x = _morph(x, cfg, gen)
    if cfg.blur_prob > 0 and cfg.blur_sigma > 0:
        x = _blur(x, cfg, gen)
    if cfg.dots_prob > 0 and cfg.dots_count > 0:
        x = _dots(x, cfg, gen)
    if cfg.noise_prob > 0 and cfg.noise_amount > 0:
        x = _salt_pepper(x, cfg, gen)
    return x.clamp_(0.0, 1.0)
