"""Temperature scaling (fitted by NLL on held-out logits) and expected calibration error."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, steps: int = 60) -> float:
    """Minimise NLL over log T by golden-section search (NLL is unimodal in T); deterministic,
    and never returns a T that does worse than 1."""
    detached = logits.detach().float()
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(detached, labels, math.exp(a)), nll(detached, labels, math.exp(b))
    for _ in range(steps):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(detached, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(detached, labels, math.exp(b))
    fitted = math.exp((lo + hi) / 2)
    return fitted if nll(detached, labels, fitted) <= nll(detached, labels, 1.0) else 1.0


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15
) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for low, high in pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += (
                in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
            )
    return float(ece)
