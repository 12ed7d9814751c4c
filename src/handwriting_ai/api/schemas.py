"""HTTP response bodies (attrs, so the OpenAPI schema shows their fields)."""

from __future__ import annotations

from attrs import Factory, frozen


@frozen
class ReadResponse:
    digit: int
    confidence: float
    probs: list[float]
    model_id: str
    uncertain: bool
    visual_png_b64: str | None
    # The read's id (also its X-Request-ID): what `POST /v1/feedback` corrects.
    request_id: str = ""


@frozen
class ErrorBody:
    code: str
    message: str
    request_id: str


@frozen
class MemberInfo:
    model_id: str
    arch: str
    n_classes: int
    version: str
    run_id: str
    created_at: str
    schema_version: str
    val_acc: float
    test_acc: float | None
    temperature: float


@frozen
class StoredVersion:
    """One stored version; `role` is `current` (what CURRENT names) or `candidate`."""

    version: str
    val_acc: float | None
    created_at: str | None
    role: str


@frozen
class ModelVersions:
    model_id: str
    served_version: str | None
    versions: list[StoredVersion]


@frozen
class ActiveModels:
    model_loaded: bool
    model_id: str | None
    ensemble_size: int
    model_ids: list[str]
    tta_profile: str
    preprocess_hash: str
    members: list[MemberInfo]
    models: list[ModelVersions] = Factory(list)


@frozen
class Readiness:
    status: str
    model_loaded: bool
    model_id: str | None
    manifest_schema_version: str | None
    build: str | None
    ensemble_size: int | None
    model_ids: list[str] | None


@frozen
class VersionInfo:
    service: str
    version: str
    build: str
    commit: str
