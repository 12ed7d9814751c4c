"""An exponential moving average of a model's weights (and BatchNorm statistics).

torch's `AveragedModel` does the bookkeeping; what it lacks is a warm-up: with a fixed decay of
0.999 a short run (a test, a 1-epoch job) would ship weights still mostly from initialisation.
So the decay ramps up as `(1 + n) / (10 + n)` until it reaches the configured one (timm's rule).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warm_decay(decay: float, steps: int) -> float:
    return min(decay, (1 + steps) / (10 + steps))


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    def average(
        averaged: torch.Tensor, current: torch.Tensor, steps: torch.Tensor | int
    ) -> torch.Tensor:
        if not averaged.is_floating_point():  # BatchNorm's num_batches_tracked
            return current
        return averaged.lerp(current, 1.0 - warm_decay(decay, int(steps)))

    return AveragedModel(model, avg_fn=average, use_buffers=True)
