"""The promotion gate around its tolerance: a table at the edge of both bars (the version served
and the best ever served), then the same decisions over HTTP, as uploads that a replica serves
or holds."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import Serve
from handwriting_ai.api.schemas import ActiveModels
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.promotion import GateRecord, should_promote
from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE
from helpers import Artifact, Client, ManifestEdit, json_of, make_settings, write_artifact

TOLERANCE = 0.002
SERVED = 0.991  # the served version's val_acc: its bar is 0.989

# (candidate, served val_acc, best ever served, promoted?)
TABLE: list[tuple[float, float | None, float | None, bool]] = [
    # The served version's bar alone.
    (0.995, SERVED, None, True),
    (0.991, SERVED, None, True),
    (0.9891, SERVED, None, True),
    (0.989, SERVED, None, True),  # exactly the tolerance below: still promoted
    (0.9889, SERVED, None, False),
    (0.9879, SERVED, None, False),
    # The best-ever bar alone (CURRENT unreadable).
    (0.989, None, 0.991, True),
    (0.9889, None, 0.991, False),
    (0.9879, None, 0.991, False),
    # Both: the higher bar decides, whichever it is.
    (0.989, 0.95, 0.991, True),
    (0.9879, 0.95, 0.991, False),  # clears the served bar, not the best one
    (0.989, 0.991, 0.95, True),
    (0.9879, 0.991, 0.95, False),  # clears the best bar, not the served one
    (0.9879, 0.9899, 0.9899, True),  # exactly the tolerance below both
    # Exactly the tolerance below, where `0.500009 - 0.002` rounds above 0.498009 in floats.
    (0.498009, 0.500009, None, True),
    (0.498008, 0.500009, None, False),
    # Nothing to compare with: the first version of a model is served whatever it scores.
    (0.0, None, None, True),
    (0.5, None, None, True),
]


@pytest.mark.parametrize(("candidate", "served", "best", "promoted"), TABLE)
def test_gate_table_around_the_tolerance(
    candidate: float, served: float | None, best: float | None, promoted: bool
) -> None:
    assert should_promote(candidate, served, TOLERANCE, best) is promoted


def test_zero_tolerance_means_no_worse() -> None:
    assert should_promote(SERVED, SERVED, 0.0) is True
    assert should_promote(0.9909, SERVED, 0.0) is False
    assert should_promote(0.9909, None, 0.0, SERVED) is False


def test_the_best_ever_bar_never_goes_down() -> None:
    record = GateRecord().served("a", 0.991).served("b", 0.98)
    assert (record.best_val_acc, record.best_version) == (0.991, "a")
    record = record.served("c", 0.995)
    assert (record.best_val_acc, record.best_version) == (0.995, "c")


# --------------------------------------------------------------------------- through HTTP

KEY = "gate-key"
MODEL_ID = "tiny_gate"


def at(val_acc: float) -> ManifestEdit:
    def edit(data: dict[str, object]) -> None:
        data["val_acc"] = val_acc

    return edit


def upload(client: Client, art: Artifact) -> httpx.Response:
    parts = {"model": MODEL_FILE, "manifest": MANIFEST_FILE, "metrics": METRICS_FILE}
    files = {
        part: (name, (art.directory / name).read_bytes(), "application/octet-stream")
        for part, name in parts.items()
    }
    return client.post(
        "/v1/admin/models/upload",
        files=files,
        data={"model_id": art.model_id},
        headers={"X-Api-Key": KEY},
    )


def test_uploads_are_served_or_held_by_the_gate(
    serve: Serve, model_dir: Path, tmp_path: Path
) -> None:
    """Replicas share the model directory; each judges new versions before it serves. A fresh
    replica per step shows the gate's decision without waiting for a periodic pass."""
    env = {"SECURITY__ADMIN_KEY": KEY, "DIGITS__PROMOTION_TOLERANCE": str(TOLERANCE)}
    settings = make_settings(model_dir, [MODEL_ID], env)
    write_artifact(model_dir, MODEL_ID, seed=1, version="20260101T000000Z", edit=at(SERVED))
    admin = serve(settings)
    outside = tmp_path / "trained"

    def served_after_upload(version: str, val_acc: float) -> str:
        art = write_artifact(outside, MODEL_ID, seed=2, version=version, edit=at(val_acc))
        response = upload(admin, art)
        assert response.status_code == 201, response.text
        replica = serve(settings)
        active = structure(json_of(replica.get("/v1/models/active")), ActiveModels)
        (member,) = active.members
        return member.version

    # 0.0021 below the served 0.991: held.
    assert served_after_upload("20260101T000001Z", 0.9879) == "20260101T000000Z"
    # Exactly the tolerance below: promoted (the held version stays held).
    assert served_after_upload("20260101T000002Z", 0.989) == "20260101T000002Z"
    # Within the tolerance of the served 0.989, but 0.0035 below the best ever served (0.991).
    assert served_after_upload("20260101T000003Z", 0.9875) == "20260101T000002Z"
    # Within the tolerance of both: promoted.
    assert served_after_upload("20260101T000004Z", 0.9895) == "20260101T000004Z"
