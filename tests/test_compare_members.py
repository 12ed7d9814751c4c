"""`ops/compare_members.py`: how it finds members and scores a subset (as `/v1/read` would)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from helpers import load_script, write_artifact

SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "compare_members.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script(SCRIPT, "compare_members_script")


def test_a_subset_is_scored_on_its_averaged_probabilities(script: ModuleType) -> None:
    # Two members sure of the wrong digit by a little, one sure of the right digit by a lot:
    # a majority vote reads 1, the mean of the probabilities (what the service serves) reads 0.
    slightly_wrong = np.array([[0.45, 0.55]], dtype=np.float32)
    very_right = np.array([[0.99, 0.01]], dtype=np.float32)
    probs = [slightly_wrong, slightly_wrong, very_right]
    labels = np.array([0])
    assert script.accuracy(probs, (0, 1, 2), labels) == pytest.approx(100.0)
    assert script.accuracy(probs, (0, 1), labels) == pytest.approx(0.0)
    assert script.accuracy(probs, (2,), labels) == pytest.approx(100.0)


def test_a_member_is_found_by_model_id_or_by_version_directory(
    script: ModuleType, tmp_path: Path
) -> None:
    write_artifact(tmp_path, "m", version="20250101T000000Z", temperature=1.5)
    newer = write_artifact(tmp_path, "m", version="20250102T000000Z", temperature=2.0)
    by_id = script.member_at(tmp_path / "m")  # follows CURRENT: the newer version
    assert by_id.manifest.version == newer.version
    older = script.member_at(tmp_path / "m" / "20250101T000000Z")
    assert older.manifest.temperature == pytest.approx(1.5)
    with pytest.raises(SystemExit, match="no CURRENT"):
        script.member_at(tmp_path / "absent")
