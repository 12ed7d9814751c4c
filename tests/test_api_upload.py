"""`POST /v1/admin/models/upload` through HTTP: only checked artifacts are stored, atomically."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from conftest import Serve
from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE, list_versions
from helpers import (
    Artifact,
    Client,
    assert_error,
    make_settings,
    state_of,
    tiny_module,
    write_artifact,
)

KEY = "s3cret-key"
Edit = Callable[[dict[str, object]], None]


@pytest.fixture
def source(tmp_path: Path) -> Artifact:
    """A real artifact written by the test helpers, in a folder the server does not serve."""
    return write_artifact(tmp_path / "elsewhere", "tiny_new", seed=3, version="20260101T000000Z")


@pytest.fixture
def admin(serve: Serve, model_dir: Path) -> Client:
    return serve(make_settings(model_dir, ["tiny_new"], {"SECURITY__API_KEY": KEY}))


def upload(
    client: Client,
    art: Artifact,
    *,
    model_id: str | None = None,
    key: str | None = KEY,
    manifest: bytes | None = None,
    model: bytes | None = None,
    metrics: bytes | None = None,
    skip: str | None = None,
) -> httpx.Response:
    parts = {
        "model": (
            "model.pt",
            model if model is not None else (art.directory / MODEL_FILE).read_bytes(),
        ),
        "manifest": (
            "manifest.json",
            manifest if manifest is not None else (art.directory / MANIFEST_FILE).read_bytes(),
        ),
        "metrics": (
            "metrics.json",
            metrics if metrics is not None else (art.directory / METRICS_FILE).read_bytes(),
        ),
    }
    files = {
        k: (name, data, "application/octet-stream")
        for k, (name, data) in parts.items()
        if k != skip
    }
    headers = {"X-Api-Key": key} if key is not None else {}
    return client.post(
        "/v1/admin/models/upload",
        files=files,
        data={"model_id": model_id or art.model_id},
        headers=headers,
    )


def edited_manifest(art: Artifact, edit: Edit) -> bytes:
    data = json.loads((art.directory / MANIFEST_FILE).read_text())
    assert isinstance(data, dict)
    edit(data)
    return json.dumps(data).encode()


def test_a_checked_artifact_is_stored_and_a_retry_is_harmless(
    admin: Client, source: Artifact, model_dir: Path
) -> None:
    first = upload(admin, source)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["model_id"] == "tiny_new"
    assert body["version"] == source.version
    assert body["created"] is True
    assert body["model_bytes"] > 0
    stored = model_dir / "tiny_new" / source.version
    assert {p.name for p in stored.iterdir()} == {MODEL_FILE, MANIFEST_FILE, METRICS_FILE}
    assert torch.load(stored / MODEL_FILE, weights_only=True).keys() == source.state.keys()
    assert not [p for p in (model_dir / "tiny_new").iterdir() if p.name.startswith(".upload-")]

    again = upload(admin, source)
    assert again.status_code == 201
    assert again.json()["created"] is False
    assert list_versions(model_dir, "tiny_new") == [source.version]


def test_a_job_keeps_the_version_its_first_run_stored(
    admin: Client, tmp_path: Path, model_dir: Path
) -> None:
    """A worker died after its upload and before reporting; the rerun's model is not stored
    beside the first: the job's one version is the one already stored."""

    def of_job(data: dict[str, object]) -> None:
        data["request_id"], data["entry_id"] = "job-7", "1-0"

    first = write_artifact(
        tmp_path / "run1", "tiny_new", seed=3, version="20260101T000000Z", edit=of_job
    )
    rerun = write_artifact(
        tmp_path / "run2", "tiny_new", seed=4, version="20260101T000100Z", edit=of_job
    )
    assert upload(admin, first).json()["created"] is True
    again = upload(admin, rerun)
    assert again.status_code == 201, again.text
    assert (again.json()["version"], again.json()["created"]) == (first.version, False)
    assert list_versions(model_dir, "tiny_new") == [first.version]

    def reused(data: dict[str, object]) -> None:  # the request_id again, a later entry: a new job
        data["request_id"], data["entry_id"] = "job-7", "9-0"

    later = write_artifact(
        tmp_path / "run3", "tiny_new", seed=5, version="20260102T000000Z", edit=reused
    )
    assert upload(admin, later).json()["created"] is True
    assert list_versions(model_dir, "tiny_new") == [first.version, later.version]


def test_same_version_with_other_weights_is_a_conflict(admin: Client, source: Artifact) -> None:
    assert upload(admin, source).status_code == 201
    buf = io.BytesIO()
    torch.save(state_of(tiny_module(seed=99)), buf)
    assert_error(upload(admin, source, model=buf.getvalue()), 409, "conflict")


def test_uploads_need_the_key(serve: Serve, model_dir: Path, source: Artifact) -> None:
    open_api = serve(make_settings(model_dir, ["tiny_new"]))
    assert_error(upload(open_api, source), 403, "forbidden")
    keyed = serve(make_settings(model_dir, ["tiny_new"], {"SECURITY__API_KEY": KEY}))
    assert_error(upload(keyed, source, key=None), 401, "unauthorized")
    assert_error(upload(keyed, source, key="wrong"), 401, "unauthorized")
    assert list_versions(model_dir, "tiny_new") == []


def test_an_admin_key_guards_uploads_while_reads_stay_open(
    serve: Serve, model_dir: Path, source: Artifact
) -> None:
    client = serve(make_settings(model_dir, ["tiny_new"], {"SECURITY__ADMIN_KEY": KEY}))
    assert client.get("/v1/models/active").status_code == 200  # no key needed to read
    assert_error(upload(client, source, key=None), 401, "unauthorized")
    assert upload(client, source).status_code == 201
    assert list_versions(model_dir, "tiny_new") == [source.version]


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda m: m.update(schema_version="v1.0"), "invalid_manifest"),
        (lambda m: m.update(preprocess_hash="0000000000000000"), "invalid_manifest"),
        (lambda m: m.pop("val_acc"), "invalid_manifest"),
        (lambda m: m.update(arch="alexnet"), "unknown_arch"),
        (lambda m: m.update(version="../../etc"), "invalid_manifest"),
    ],
)
def test_bad_manifests_are_refused(
    admin: Client, source: Artifact, model_dir: Path, edit: Edit, code: str
) -> None:
    body = assert_error(upload(admin, source, manifest=edited_manifest(source, edit)), 400, code)
    assert body.message
    assert not (model_dir / "tiny_new").exists() or list_versions(model_dir, "tiny_new") == []


def test_model_id_must_match_the_form_and_be_safe(admin: Client, source: Artifact) -> None:
    assert_error(upload(admin, source, model_id="tiny_other"), 400, "model_id_mismatch")
    assert_error(upload(admin, source, model_id="../escape"), 400, "invalid_model_id")


def test_weights_that_do_not_fit_or_are_not_data_are_refused(
    admin: Client, source: Artifact
) -> None:
    buf = io.BytesIO()
    torch.save(state_of(tiny_module(seed=1, arch="digitnet")), buf)  # another arch's weights
    assert_error(upload(admin, source, model=buf.getvalue()), 400, "invalid_weights")
    assert_error(upload(admin, source, model=b"not a torch file"), 400, "invalid_weights")
    # A pickle that would run code: test_pickle_safety.py (it checks that the code never ran).


def test_metrics_and_parts_are_checked(admin: Client, source: Artifact) -> None:
    assert_error(upload(admin, source, metrics=b"[1, 2"), 400, "invalid_metrics")
    assert_error(upload(admin, source, metrics=b"[1, 2]"), 400, "invalid_metrics")
    assert_error(upload(admin, source, metrics=b" " * (1024 * 1024 + 1)), 413, "too_large")
    assert_error(upload(admin, source, skip="manifest"), 422, "malformed_form")


def _raw_manifest(art: Artifact, field: str, raw_value: bytes) -> bytes:
    """The artifact's manifest with one field's value replaced by raw JSON text (maybe hostile)."""
    text = json.dumps(json.loads((art.directory / MANIFEST_FILE).read_text()), sort_keys=True)
    head, _, tail = text.partition(f'"{field}": ')
    assert tail, field
    rest = tail[len(json.dumps(json.loads((art.directory / MANIFEST_FILE).read_text())[field])) :]
    return head.encode() + f'"{field}": '.encode() + raw_value + rest.encode()


HOSTILE_MANIFESTS = {
    "huge_int_seed": ("training_seed", b"9" * 5000),
    "huge_int_for_a_float": ("val_acc", b"9" * 4000),
    "deep_nesting": ("training_recipe", b"[" * 100_000 + b"]" * 100_000),
    "deep_object": ("training_recipe", b'{"a":' * 5000 + b"1" + b"}" * 5000),
    "nan": ("val_acc", b"NaN"),
    "infinity_temperature": ("temperature", b"Infinity"),
    "overflowing_float": ("temperature", b"1e999"),
    "nan_in_recipe": ("training_recipe", b'{"lr": NaN}'),
    "lone_surrogate": ("version", b'"\\ud800"'),
    "lone_surrogate_in_recipe": ("training_recipe", b'{"\\udc00": 1}'),
    "invalid_utf8": ("run_id", b'"\xff\xfe"'),
    "huge_string": ("version", b'"' + b"v" * 500_000 + b'"'),
    "duplicate_key": ("model_id", b'"tiny_new", "model_id": "tiny_new"'),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifests_are_400(
    admin: Client, source: Artifact, model_dir: Path, name: str
) -> None:
    field, raw_value = HOSTILE_MANIFESTS[name]
    manifest = _raw_manifest(source, field, raw_value)
    body = assert_error(upload(admin, source, manifest=manifest), 400, "invalid_manifest")
    assert len(body.message) <= 2000, len(body.message)
    assert not (model_dir / "tiny_new").exists() or list_versions(model_dir, "tiny_new") == []
    assert upload(admin, source).status_code == 201  # the API still serves


HOSTILE_METRICS = {
    "huge_int": b'{"val_acc": ' + b"9" * 5000 + b"}",
    "deep_nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep_object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "nan": b'{"val_acc": NaN}',
    "minus_infinity": b'{"val_acc": -Infinity}',
    "lone_surrogate": b'{"note": "\\udbff"}',
    "invalid_utf8": b'{"note": "\xc3\x28"}',
    "duplicate_key": b'{"val_acc": 0.9, "val_acc": 0.1}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_METRICS))
def test_hostile_metrics_are_400(
    admin: Client, source: Artifact, model_dir: Path, name: str
) -> None:
    response = upload(admin, source, metrics=HOSTILE_METRICS[name])
    assert_error(response, 400, "invalid_metrics")
    assert not (model_dir / "tiny_new").exists() or list_versions(model_dir, "tiny_new") == []


def test_admin_ping_checks_the_upload_key(serve: Serve, model_dir: Path) -> None:
    admin_keyed = serve(
        make_settings(
            model_dir, ["tiny_new"], {"SECURITY__ADMIN_KEY": KEY, "SECURITY__API_KEY": "other"}
        )
    )
    ok = admin_keyed.get("/v1/admin/ping", headers={"X-Api-Key": KEY})
    assert (ok.status_code, ok.json()) == (200, {"ok": True})
    wrong = admin_keyed.get("/v1/admin/ping", headers={"X-Api-Key": "other"})
    assert_error(wrong, 401, "unauthorized")  # the API key is not the upload key here
    assert_error(admin_keyed.get("/v1/admin/ping"), 401, "unauthorized")

    api_keyed = serve(make_settings(model_dir, ["tiny_new"], {"SECURITY__API_KEY": KEY}))
    assert api_keyed.get("/v1/admin/ping", headers={"X-Api-Key": KEY}).json() == {"ok": True}
    assert_error(
        api_keyed.get("/v1/admin/ping", headers={"X-Api-Key": "nope"}), 401, "unauthorized"
    )

    open_api = serve(make_settings(model_dir, ["tiny_new"]))
    assert_error(open_api.get("/v1/admin/ping", headers={"X-Api-Key": KEY}), 403, "forbidden")
    assert_error(open_api.get("/v1/admin/ping"), 403, "forbidden")
