"""`train_one_epoch` and `evaluate` as plain functions, plus the pure learning-rate schedule."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from attrs import frozen
from torch import nn
from torch.optim.swa_utils import AveragedModel

from handwriting_ai.preprocessing.pipeline import PARAMS
from handwriting_ai.training.augment import augment_batch
from handwriting_ai.training.config import AugmentConfig
from handwriting_ai.training.progress import BatchProgress, ProgressReporter, should_report_batch

_MEAN = float(PARAMS["mean"])
_STD = float(PARAMS["std"])


class TrainingCancelledError(Exception):
    """Raised between batches when the caller asked the run to stop."""


def lr_at(step: int, total_steps: int, peak: float, warmup_frac: float = 0.15) -> float:
    """One-cycle: linear warm-up to `peak`, then cosine down to 1% of it."""
    warmup = max(1, int(total_steps * warmup_frac))
    if step < warmup:
        return peak * (0.1 + 0.9 * step / warmup)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] ink pixels -> the MNIST-normalised input the models take."""
    return (pixels - _MEAN) / _STD


@frozen
class EpochStats:
    train_loss: float
    samples: int
    time_s: float


@frozen
class EpochPlan:
    bf16: bool
    epoch: int
    total_epochs: int
    batch_size: int
    step_offset: int
    total_steps: int
    peak_lr: float
    batch_every: int


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    plan: EpochPlan,
    *,
    aug: AugmentConfig,
    gen: torch.Generator,
    reporter: ProgressReporter,
    should_stop: Callable[[], bool],
    ema: AveragedModel | None = None,
) -> EpochStats:
    """`pixels`: (N, 28, 28) uint8 as preprocessing produced them."""
    model.train()
    n = len(labels)
    total_batches = math.ceil(n / plan.batch_size)
    order = torch.randperm(n, generator=gen)
    started = time.perf_counter()
    loss_sum, seen = 0.0, 0
    for b in range(total_batches):
        if should_stop():
            raise TrainingCancelledError(f"cancelled at epoch {plan.epoch}, batch {b}")
        idx = order[b * plan.batch_size : (b + 1) * plan.batch_size]
        x = augment_batch(pixels[idx].unsqueeze(1).float().div_(255.0), aug, gen)
        y = labels[idx]
        lr = lr_at(plan.step_offset + b, plan.total_steps, plan.peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16):
            logits = model(normalise(x))
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        batch_loss = float(loss.detach())
        loss_sum += batch_loss * len(y)
        seen += len(y)
        if should_report_batch(b + 1, total_batches, plan.batch_every):
            elapsed = time.perf_counter() - started
            reporter.on_batch(
                BatchProgress(
                    epoch=plan.epoch,
                    total_epochs=plan.total_epochs,
                    batch=b + 1,
                    total_batches=total_batches,
                    batch_loss=round(batch_loss, 6),
                    batch_acc=round(float((logits.argmax(1) == y).float().mean()), 6),
                    avg_loss=round(loss_sum / seen, 6),
                    samples_per_sec=round(seen / max(elapsed, 1e-9), 1),
                )
            )
    return EpochStats(
        train_loss=loss_sum / max(seen, 1), samples=seen, time_s=time.perf_counter() - started
    )


def predict_logits(model: nn.Module, pixels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].unsqueeze(1).float().div_(255.0)
            outs.append(model(normalise(x)))
    return torch.cat(outs) if outs else torch.zeros(0, 10)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
