"""Check an uploaded artifact (manifest, weights, metrics) and store it atomically.

Runs in the executor: loading the weights into their architecture is the only proof that they
fit, and torch must stay off the event loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from attrs import evolve, frozen

from handwriting_ai.api.json_body import JsonBodyError, parse_json
from handwriting_ai.errors import ConflictError, InvalidArtifactError
from handwriting_ai.inference.manifest import Manifest, ManifestError, parse_manifest
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_id,
    list_versions,
    version_dir,
)
from handwriting_ai.models import UnknownArchError, create_model


@frozen
class StoredArtifact:
    model_id: str
    version: str
    path: Path
    model_bytes: int
    manifest_bytes: int
    model_sha256: str
    created: bool  # False: the same version was already stored (a retried upload)


def check_artifact(
    model_id: str, model: bytes, manifest_raw: bytes, metrics_raw: bytes, *, expected_hash: str
) -> Manifest:
    try:
        check_id(model_id, "model_id")
    except ValueError as exc:
        raise InvalidArtifactError("invalid_model_id", str(exc)) from None
    # Both documents are client input: read strictly first (no huge integers, deep nesting,
    # NaN, lone surrogates or repeated keys), so that what is stored is plain JSON any reader
    # parses, and a hostile one is a 400, never a 500.
    try:
        parse_json(manifest_raw)
    except JsonBodyError as exc:
        raise InvalidArtifactError(
            "invalid_manifest", f"manifest.json is not JSON: {exc}"
        ) from None
    try:
        metrics = parse_json(metrics_raw)
    except JsonBodyError as exc:
        raise InvalidArtifactError("invalid_metrics", f"metrics.json is not JSON: {exc}") from None
    if not isinstance(metrics, dict):
        raise InvalidArtifactError("invalid_metrics", "metrics.json must be a JSON object")
    try:
        manifest = parse_manifest(manifest_raw, expected_hash=expected_hash)
    except ManifestError as exc:
        raise InvalidArtifactError("invalid_manifest", str(exc)) from None
    if manifest.model_id != model_id:
        raise InvalidArtifactError(
            "model_id_mismatch",
            f"form model_id {model_id!r} differs from the manifest's {manifest.model_id!r}",
        )
    try:
        module = create_model(manifest.arch)
    except UnknownArchError as exc:
        raise InvalidArtifactError("unknown_arch", str(exc)) from None
    try:
        state = torch.load(io.BytesIO(model), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError("not a state dict")
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001  (any failure to load is the uploader's problem)
        raise InvalidArtifactError(
            "invalid_weights", f"model.pt does not load into {manifest.arch!r}: {str(exc)[:300]}"
        ) from None
    return manifest


def version_of_job(model_dir: Path, model_id: str, request_id: str, entry_id: str) -> str | None:
    """The stored version that the training job made (its `request_id` from that stream entry:
    a request_id used again later, after its status expired, is another job), if any."""
    if not request_id:
        return None
    for version in list_versions(model_dir, model_id):
        try:
            data: object = json.loads(
                (version_dir(model_dir, model_id, version) / MANIFEST_FILE).read_bytes()
            )
        except (OSError, ValueError, RecursionError):
            continue
        if (
            isinstance(data, dict)
            and data.get("request_id") == request_id
            and data.get("entry_id") == entry_id
        ):
            return version
    return None


def store_artifact(
    model_dir: Path, manifest: Manifest, model: bytes, manifest_raw: bytes, metrics_raw: bytes
) -> StoredArtifact:
    """Write into a temporary folder, then rename: readers see the whole version or nothing."""
    final = version_dir(model_dir, manifest.model_id, manifest.version)
    digest = hashlib.sha256(model).hexdigest()
    stored = StoredArtifact(
        model_id=manifest.model_id,
        version=manifest.version,
        path=final,
        model_bytes=len(model),
        manifest_bytes=len(manifest_raw),
        model_sha256=digest,
        created=True,
    )
    earlier = version_of_job(model_dir, manifest.model_id, manifest.request_id, manifest.entry_id)
    if earlier is not None and earlier != manifest.version:
        # The job's first run was stored and its worker died before reporting it; the rerun's
        # model is not kept: one job, one stored version, the one its events will name.
        existing_dir = version_dir(model_dir, manifest.model_id, earlier)
        return evolve(
            stored,
            version=earlier,
            path=existing_dir,
            model_bytes=(existing_dir / MODEL_FILE).stat().st_size,
            manifest_bytes=(existing_dir / MANIFEST_FILE).stat().st_size,
            created=False,
        )
    if final.exists():
        existing = (final / MODEL_FILE).read_bytes() if (final / MODEL_FILE).is_file() else b""
        if hashlib.sha256(existing).hexdigest() == digest:
            return evolve(stored, created=False)
        raise ConflictError(
            f"version {manifest.version} of {manifest.model_id} exists with different weights"
        )
    tmp = final.parent / f".upload-{manifest.version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        (tmp / MODEL_FILE).write_bytes(model)
        (tmp / MANIFEST_FILE).write_bytes(manifest_raw)
        (tmp / METRICS_FILE).write_bytes(metrics_raw)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stored
