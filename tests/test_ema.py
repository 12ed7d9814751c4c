"""The EMA of the weights: its warm-up, its arithmetic, and that training ships the average."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from handwriting_ai.training.ema import ema_model, warm_decay


def test_the_decay_warms_up_then_holds() -> None:
    assert warm_decay(0.999, 0) == pytest.approx(0.1)
    assert warm_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warm_decay(0.999, 10_000) == 0.999
    steps = [warm_decay(0.999, n) for n in range(0, 20_000, 50)]
    assert steps == sorted(steps)


def test_the_average_follows_each_step_by_the_warm_decay() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ema_model(model, 0.9)
    start = copy.deepcopy(model.state_dict())
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(8, 3))  # moves BatchNorm's running statistics
    ema.update_parameters(model)
    d = warm_decay(0.9, 1)
    now = model.state_dict()
    averaged = ema.module.state_dict()
    for name, value in start.items():
        if value.is_floating_point():
            expected = value * d + now[name] * (1 - d)
            torch.testing.assert_close(averaged[name], expected)
        else:  # num_batches_tracked follows the model
            assert torch.equal(averaged[name], now[name])
    # The live model is untouched by the averaging.
    assert not torch.equal(averaged["0.weight"], now["0.weight"])
