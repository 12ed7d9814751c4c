"""`GET /v1/models`: every stored model id, its versions, and what the registry decided of them.

Pure: built from the registry's state and manifests (read by the caller) and what this replica
serves, so the same answer comes from files or Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from attrs import frozen

from handwriting_ai.inference.promotion import Decision
from handwriting_ai.registry.state import ModelState

# current: served now; previous: what a rollback returns to; candidate: newer than current and
# not promoted (held by the gate, waiting on a pin, or not judged yet); retired: the rest.
Status = Literal["current", "previous", "candidate", "retired"]


@frozen
class VersionEntry:
    version: str
    status: Status
    created_at: str | None
    arch: str | None
    val_acc: float | None
    test_acc: float | None
    feedback_acc: float | None  # on the corrections its run held back (a `use_feedback` run)
    run_id: str | None
    request_id: str | None  # the training job that made it, and its stream entry
    entry_id: str | None
    decision: Decision | None  # the promotion gate's (or an operator's) decision
    reason: str  # why it was held or refused, or why it waits


@frozen
class ModelEntry:
    model_id: str
    served: bool
    current: str | None
    pinned: str | None
    previous: str | None
    loaded_version: str | None  # what this replica serves now (converges on `current`)
    versions: list[VersionEntry]


@frozen
class RegistryListing:
    store: Literal["redis", "directory"]
    served: list[str]
    models: list[ModelEntry]


def _text(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _number(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _status(version: str, state: ModelState) -> Status:
    if version == state.current:
        return "current"
    if state.history and version == state.history[-1]:
        return "previous"
    if state.current is None or version > state.current:
        return "candidate" if state.gate.decisions.get(version) != "promoted" else "retired"
    return "retired"


def _reason(version: str, state: ModelState, status: Status) -> str:
    reason = state.gate.reasons.get(version, "")
    if not reason and status == "candidate" and version not in state.gate.decisions:
        if state.pinned is not None:
            return f"pinned at {state.pinned}: judged once unpinned"
        return "not judged yet"
    return reason


def model_entry(
    model_id: str,
    state: ModelState,
    manifests: Mapping[str, Mapping[str, object]],
    *,
    served: bool,
    loaded_version: str | None,
) -> ModelEntry:
    versions = []
    for version in sorted(manifests):
        data = manifests[version]
        status = _status(version, state)
        versions.append(
            VersionEntry(
                version=version,
                status=status,
                created_at=_text(data, "created_at"),
                arch=_text(data, "arch"),
                val_acc=_number(data, "val_acc"),
                test_acc=_number(data, "test_acc"),
                feedback_acc=_number(data, "feedback_acc"),
                run_id=_text(data, "run_id"),
                request_id=_text(data, "request_id"),
                entry_id=_text(data, "entry_id"),
                decision=state.gate.decisions.get(version),
                reason=_reason(version, state, status),
            )
        )
    return ModelEntry(
        model_id=model_id,
        served=served,
        current=state.current,
        pinned=state.pinned,
        previous=state.history[-1] if state.history else None,
        loaded_version=loaded_version,
        versions=versions,
    )
