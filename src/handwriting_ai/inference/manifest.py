"""Model manifest v1.1: the contract between training and serving, checked before weights load."""

from __future__ import annotations

import json
import re
from pathlib import Path

from attrs import field, frozen

from handwriting_ai.contracts.converter import ContractError, converter, structure

SCHEMA_VERSION = "v1.1"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Scalar = str | int | float | bool | None


class ManifestError(ValueError):
    """Why a manifest is refused; logged, and in the upload API returned as the 4xx message."""


@frozen
class Manifest:
    schema_version: str
    model_id: str
    arch: str
    n_classes: int
    version: str
    created_at: str
    preprocess_hash: str
    val_acc: float
    temperature: float
    training_recipe: dict[str, Scalar]
    training_seed: int
    training_epochs: int
    test_acc: float | None
    recipe_hash: str
    run_id: str
    parent_model_id: str | None = None
    # The training job that made this version (`request_id`, stream entry id); empty when none.
    request_id: str = ""
    entry_id: str = ""
    # A `use_feedback` run: corrections trained on, the request_ids of those held back, and the
    # version's accuracy on the held-back ones (the promotion gate compares it with the served
    # version's on the same samples).
    feedback_count: int = 0
    feedback_holdout: list[str] = field(factory=list)
    feedback_acc: float | None = None


def parse_manifest(raw: str | bytes, *, expected_hash: str) -> Manifest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"manifest schema_version is {version!r}; only {SCHEMA_VERSION!r} is served"
        )
    try:
        manifest = structure(data, Manifest)
    except ContractError as exc:
        raise ManifestError("invalid manifest: " + "; ".join(exc.errors)) from None
    check_manifest(manifest, expected_hash=expected_hash)
    return manifest


def check_manifest(manifest: Manifest, *, expected_hash: str) -> None:
    if manifest.preprocess_hash != expected_hash:
        raise ManifestError(
            f"preprocess_hash {manifest.preprocess_hash!r} differs from this service's "
            f"{expected_hash!r}: the model was trained on differently prepared inputs"
        )
    for name in ("model_id", "version", "run_id"):
        if not SAFE_ID.match(getattr(manifest, name)):
            raise ManifestError(f"{name} {getattr(manifest, name)!r} is not a safe identifier")
    if manifest.n_classes != 10:
        raise ManifestError(f"n_classes is {manifest.n_classes}; digits need 10")
    if not manifest.temperature > 0:
        raise ManifestError(f"temperature must be positive, got {manifest.temperature}")
    if not 0.0 <= manifest.val_acc <= 1.0:
        raise ManifestError(f"val_acc must be within [0, 1], got {manifest.val_acc}")


def manifest_json(manifest: Manifest) -> str:
    return json.dumps(converter.unstructure(manifest), indent=2, sort_keys=True) + "\n"


def read_manifest(path: Path, *, expected_hash: str) -> Manifest:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    return parse_manifest(raw, expected_hash=expected_hash)
