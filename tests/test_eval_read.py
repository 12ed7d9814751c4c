"""`ops/eval_read.py`'s figures: the calibration error and the `uncertain` curve it reports."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "eval_read.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script(SCRIPT, "eval_read_script")


def test_the_uncertain_curve_counts_wrong_and_right_readings_apart(script: ModuleType) -> None:
    readings = [(0.99, True)] * 90 + [(0.65, True)] * 10 + [(0.55, False)] * 3 + [(0.9, False)]
    curve = {p["threshold"]: p for p in script.uncertain_curve(readings, (0.5, 0.6, 0.7, 0.95))}
    assert curve[0.5] == {"threshold": 0.5, "wrong_flagged": 0.0, "right_flagged": 0.0}
    assert curve[0.6]["wrong_flagged"] == 0.75  # the three at 0.55, not the confident one
    assert curve[0.6]["right_flagged"] == 0.0
    assert curve[0.7]["right_flagged"] == pytest.approx(0.10)
    assert curve[0.95]["wrong_flagged"] == 1.0


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy(
    script: ModuleType,
) -> None:
    matched = [(0.75, True)] * 3 + [(0.75, False)]
    assert script.expected_calibration_error(matched) == pytest.approx(0.0)
    overconfident = [(0.95, True)] * 5 + [(0.95, False)] * 5
    assert script.expected_calibration_error(overconfident) == pytest.approx(0.45)
