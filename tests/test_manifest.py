"""Manifest v1.1 checks, the model store layout, and refusals of bad members at serving time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
import torch
from structlog.testing import capture_logs

from conftest import Serve
from handwriting_ai.api.schemas import Readiness
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.engine import load_ensemble
from handwriting_ai.inference.manifest import (
    Manifest,
    ManifestError,
    manifest_json,
    parse_manifest,
)
from handwriting_ai.inference.store import (
    MODEL_FILE,
    current_version,
    list_versions,
    set_current,
)
from handwriting_ai.preprocessing import preprocess_hash
from helpers import (
    TINY_ARCH,
    ManifestEdit,
    json_of,
    make_manifest,
    make_settings,
    png_bytes,
    post_read,
    seven,
    state_of,
    tiny_module,
    write_artifact,
)

HASH = preprocess_hash()


def good() -> Manifest:
    return make_manifest("tiny", version="v1", arch=TINY_ARCH, seed=0, temperature=1.5)


def raw(**changes: object) -> str:
    data = json.loads(manifest_json(good()))
    assert isinstance(data, dict)
    data.update(changes)
    return json.dumps(data)


# --------------------------------------------------------------------------- parsing


def test_manifest_round_trips() -> None:
    assert parse_manifest(manifest_json(good()), expected_hash=HASH) == good()


def test_manifest_json_is_stable() -> None:
    text = manifest_json(good())
    assert text.endswith("\n")
    data = json.loads(text)
    assert isinstance(data, dict)
    assert list(data) == sorted(data)
    assert data["schema_version"] == "v1.1"
    assert data["preprocess_hash"] == HASH


def test_optional_parent_may_be_omitted() -> None:
    data = json.loads(manifest_json(good()))
    assert isinstance(data, dict)
    del data["parent_model_id"]
    assert parse_manifest(json.dumps(data), expected_hash=HASH).parent_model_id is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (raw(schema_version="v1.0"), "manifest schema_version is 'v1.0'; only 'v1.1' is served"),
        (raw(preprocess_hash="0000000000000000"), "preprocess_hash '0000000000000000' differs"),
        (raw(n_classes=11), "n_classes is 11; digits need 10"),
        (raw(temperature=0), "temperature must be positive"),
        (raw(val_acc=1.5), "val_acc must be within [0, 1]"),
        (raw(model_id="../etc"), "model_id '../etc' is not a safe identifier"),
        (raw(training_epochs="many"), "invalid manifest: "),
        (raw(surprise=1), "invalid manifest: "),
        ("{not json", "manifest is not JSON"),
        ("[1, 2]", "manifest must be a JSON object"),
    ],
    ids=[
        "v1.0",
        "hash",
        "n_classes",
        "temperature",
        "val_acc",
        "unsafe_id",
        "wrong_type",
        "extra_key",
        "not_json",
        "not_object",
    ],
)
def test_bad_manifests_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, expected_hash=HASH)
    assert reason in str(caught.value)


def test_missing_field_is_named() -> None:
    data = json.loads(manifest_json(good()))
    assert isinstance(data, dict)
    del data["temperature"]
    with pytest.raises(ManifestError, match=r"temperature"):
        parse_manifest(json.dumps(data), expected_hash=HASH)


# --------------------------------------------------------------------------- the store


def test_current_pointer_and_versions(model_dir: Path) -> None:
    write_artifact(model_dir, "tiny", version="20250101T000000Z")
    write_artifact(model_dir, "tiny", version="20250102T000000Z")
    assert list_versions(model_dir, "tiny") == ["20250101T000000Z", "20250102T000000Z"]
    assert current_version(model_dir, "tiny") == "20250102T000000Z"
    set_current(model_dir, "tiny", "20250101T000000Z")
    assert current_version(model_dir, "tiny") == "20250101T000000Z"
    (model_dir / "tiny" / "CURRENT").unlink()
    assert current_version(model_dir, "tiny") == "20250102T000000Z"  # newest complete version
    assert current_version(model_dir, "absent") is None


def test_ids_cannot_climb_out(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        current_version(model_dir, "..")
    with pytest.raises(ValueError, match="must match"):
        set_current(model_dir, "tiny", "../../x")


def test_weights_load_only_as_data(model_dir: Path) -> None:
    artifact = write_artifact(model_dir, "tiny")
    ensemble = load_ensemble(model_dir, ["tiny"], expected_hash=HASH)
    assert ensemble is not None
    (member,) = ensemble.members
    for name, tensor in member.module.state_dict().items():
        assert torch.equal(tensor, artifact.state[name])
    assert not member.module.training


# --------------------------------------------------------------------------- refusal when serving


def _set(key: str, value: object) -> ManifestEdit:
    def edit(data: dict[str, object]) -> None:
        data[key] = value

    return edit


def _drop(key: str) -> ManifestEdit:
    def edit(data: dict[str, object]) -> None:
        del data[key]

    return edit


def _bad(edit: ManifestEdit) -> BadMember:
    def make(model_dir: Path) -> None:
        write_artifact(model_dir, "bad", seed=3, edit=edit)

    return make


def _misfit(model_dir: Path) -> None:
    # digitnet weights under a manifest that says digitnet_tiny: the shapes do not fit.
    write_artifact(model_dir, "bad", state=state_of(tiny_module(seed=3, arch="digitnet")))


def _no_weights(model_dir: Path) -> None:
    (write_artifact(model_dir, "bad", seed=3).directory / MODEL_FILE).unlink()


def _garbage_weights(model_dir: Path) -> None:
    (write_artifact(model_dir, "bad", seed=3).directory / MODEL_FILE).write_bytes(b"not torch")


BadMember = Callable[[Path], None]
CASES: dict[str, tuple[BadMember, str]] = {
    "schema_v1.0": (_bad(_set("schema_version", "v1.0")), "manifest schema_version is 'v1.0'"),
    "wrong_hash": (
        _bad(_set("preprocess_hash", "ffffffffffffffff")),
        "preprocess_hash 'ffffffffffffffff' differs",
    ),
    "unknown_arch": (_bad(_set("arch", "transformer9000")), "unknown arch 'transformer9000'"),
    "misfit_weights": (_misfit, "weights do not fit the arch"),
    "missing_field": (
        _bad(_drop("run_id")),
        "invalid manifest: required field missing @ $.run_id",
    ),
    "no_weights": (_no_weights, "cannot read weights"),
    "garbage_weights": (_garbage_weights, "cannot read weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_member_is_refused_and_the_rest_serves(
    serve: Serve, model_dir: Path, case: str
) -> None:
    make_bad, reason = CASES[case]
    write_artifact(model_dir, "good", seed=1, prefer=7)
    make_bad(model_dir)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        client = serve(make_settings(model_dir, ["bad", "good"]))
    refused = [e for e in logs if e["event"] == "model_refused"]
    assert len(refused) == 1, logs
    assert refused[0]["model_id"] == "bad"
    assert refused[0]["log_level"] == "error"
    assert reason in str(refused[0]["reason"])
    assert any(e["event"] == "model_loaded" and e["model_id"] == "good" for e in logs)

    ready = structure(json_of(client.get("/readyz")), Readiness)
    assert ready.model_ids == ["good"]
    assert ready.model_id == "good"
    response = post_read(client, png_bytes(seven()))
    assert response.status_code == 200
    body = json_of(response)
    assert isinstance(body, dict)
    assert body["model_id"] == "good"


def test_all_members_refused_is_not_ready(serve: Serve, model_dir: Path) -> None:
    write_artifact(model_dir, "bad", edit=_set("schema_version", "v1.0"))
    with capture_logs() as logs:
        client = serve(make_settings(model_dir, ["bad"]))
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "model_refused",
        "no_model_loaded",
    ]
    assert client.get("/readyz").status_code == 503
