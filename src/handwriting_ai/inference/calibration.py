"""Pure ensemble maths: temperature-scaled softmax per member, probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def calibrated_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T); T > 1 softens an over-confident model."""
    return torch.softmax(logits / temperature, dim=-1)


def ensemble_probs(logits: Sequence[torch.Tensor], temperatures: Sequence[float]) -> torch.Tensor:
    """Mean over members (and over TTA views, the batch axis) of calibrated probabilities."""
    if len(logits) != len(temperatures) or not logits:
        raise ValueError("one temperature per member, at least one member")
    per_member = [
        calibrated_probs(lg, t).mean(dim=0) for lg, t in zip(logits, temperatures, strict=True)
    ]
    return torch.stack(per_member).mean(dim=0)
