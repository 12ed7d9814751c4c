"""A model file is data: a pickle that would run code when loaded is refused, and its code never
runs, whether it arrives by upload or is found in the model directory.

The payload creates a sentinel file when unpickled. Refusal alone proves little (an unpickled
object also fails the strict state-dict load); the absent sentinel proves nothing ran.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
import torch
from structlog.testing import capture_logs

from conftest import Serve
from handwriting_ai.api.schemas import ActiveModels, Readiness
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    list_versions,
    set_current,
)
from helpers import (
    ManifestEdit,
    assert_error,
    json_of,
    make_settings,
    png_bytes,
    post_read,
    seven,
    write_artifact,
)

KEY = "pickle-key"
FORMATS = ["zip", "legacy"]  # torch.save's format and the pre-1.6 one: torch.load reads both


class Payload:
    """Unpickling this calls `open(sentinel, "w")`: the file appears if the pickle ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Callable[[str, str], object], tuple[str, str]]:
        return (open, (str(self.sentinel), "w"))


def evil_weights(sentinel: Path, fmt: str) -> bytes:
    buf = io.BytesIO()
    state = {"features.0.weight": Payload(sentinel)}
    torch.save(state, buf, _use_new_zipfile_serialization=fmt == "zip")
    return buf.getvalue()


def test_the_payload_runs_when_unpickled_without_the_guard(tmp_path: Path) -> None:
    """The test's own check: these bytes do run code under a plain `torch.load`."""
    sentinel = tmp_path / "ran"
    torch.load(io.BytesIO(evil_weights(sentinel, "zip")), weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_uploaded_pickle_is_400_and_never_runs(
    serve: Serve, model_dir: Path, tmp_path: Path, fmt: str
) -> None:
    sentinel = tmp_path / "pwned"
    source = write_artifact(tmp_path / "elsewhere", "tiny_new", version="20260101T000000Z")
    client = serve(make_settings(model_dir, ["tiny_new"], {"SECURITY__ADMIN_KEY": KEY}))
    files = {
        "model": (MODEL_FILE, evil_weights(sentinel, fmt), "application/octet-stream"),
        "manifest": (MANIFEST_FILE, (source.directory / MANIFEST_FILE).read_bytes(), "a/b"),
        "metrics": (METRICS_FILE, (source.directory / METRICS_FILE).read_bytes(), "a/b"),
    }
    response = client.post(
        "/v1/admin/models/upload",
        files=files,
        data={"model_id": "tiny_new"},
        headers={"X-Api-Key": KEY},
    )
    assert_error(response, 400, "invalid_weights")
    assert not sentinel.exists(), "the uploaded pickle ran code in the API"
    assert list_versions(model_dir, "tiny_new") == []


def _at(val_acc: float) -> ManifestEdit:
    def edit(data: dict[str, object]) -> None:
        data["val_acc"] = val_acc

    return edit


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["current", "candidate"])
def test_a_pickle_in_the_model_dir_is_refused_and_never_runs(
    serve: Serve, model_dir: Path, tmp_path: Path, where: str, fmt: str
) -> None:
    """`current`: the version CURRENT names, loaded at start-up (beside a good model, so the API
    still serves). `candidate`: a newer version the start-up reconcile pass judges."""
    sentinel = tmp_path / "pwned"
    good = write_artifact(model_dir, "good", seed=1, prefer=7)
    old = write_artifact(model_dir, "evil", seed=2, version="20250101T000000Z", edit=_at(0.5))
    if where == "candidate":
        new = write_artifact(model_dir, "evil", seed=3, version="20260101T000000Z", edit=_at(0.9))
        set_current(model_dir, "evil", old.version)
        bad = new
    else:
        bad = old
    (bad.directory / MODEL_FILE).write_bytes(evil_weights(sentinel, fmt))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        client = serve(make_settings(model_dir, ["good", "evil"]))
    assert not sentinel.exists(), "a pickle in the model directory ran code in the API"
    refused = [e for e in logs if e["event"] == "model_refused"]
    assert [e["model_id"] for e in refused] == ["evil"], logs
    assert "cannot read weights" in str(refused[0]["reason"])

    active = structure(json_of(client.get("/v1/models/active")), ActiveModels)
    served = {m.model_id: m.version for m in active.members}
    if where == "candidate":
        assert served == {"good": good.version, "evil": old.version}
    else:
        assert served == {"good": good.version}
        assert structure(json_of(client.get("/readyz")), Readiness).model_ids == ["good"]
    assert post_read(client, png_bytes(seven())).status_code == 200
