"""Run artifacts on disk: written whole or not at all (temporary folder, then rename); retention."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path

import torch

from handwriting_ai.inference.manifest import Manifest, manifest_json
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    current_version,
    list_versions,
    version_dir,
)

Metrics = dict[str, float | int | str | list[dict[str, float | int]] | None]


def new_run_id(now: datetime) -> str:
    """Sorts by time (retention and `list_versions` rely on it); the suffix keeps it unique."""
    return f"{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}"


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_artifacts(
    model_dir: Path, manifest: Manifest, state: dict[str, torch.Tensor], metrics: Metrics
) -> Path:
    final = version_dir(model_dir, manifest.model_id, manifest.version)
    tmp = final.parent / f".tmp-{manifest.version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / MODEL_FILE)
    (tmp / MANIFEST_FILE).write_text(manifest_json(manifest))
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, final)
    return final


def prune_runs(
    model_dir: Path, model_id: str, *, keep: int, protect: frozenset[str] = frozenset()
) -> list[str]:
    """Delete all but the `keep` newest versions; the served one (`CURRENT`) is never deleted."""
    versions = list_versions(model_dir, model_id)
    served = current_version(model_dir, model_id)
    keep_set = set(versions[-keep:]) | set(protect) | ({served} if served else set())
    deleted = [v for v in versions if v not in keep_set]
    for version in deleted:
        shutil.rmtree(version_dir(model_dir, model_id, version), ignore_errors=True)
    return deleted
