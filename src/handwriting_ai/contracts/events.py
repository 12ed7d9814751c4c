"""Training events on `digits:events`: an attrs class per `digits.train.*.v1` type, and encoding.

A stream entry is `{"type": <type>, "event": <the whole event as one JSON document>}`: `type` lets
a reader filter without parsing, `event` keeps numbers, booleans and nulls typed. Events are read
tolerantly (unknown fields are ignored), so a producer that adds a field does not break an older
reader; jobs, by contrast, are read strictly (see `jobs.py`). Within `.v1` fields are only added,
always with a default, and a field's meaning never changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

import attrs
from attrs import field, frozen
from cattrs.gen import make_dict_structure_fn

from handwriting_ai.contracts.converter import ContractError, converter
from handwriting_ai.contracts.fields import doc, raise_on_bad_fields, structure_readable

TS_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|\+00:00)$"
_TS_HINT = "an ISO 8601 UTC timestamp like 2025-01-31T12:00:00.000Z"


def now_iso() -> str:
    """The current time as `ts` wants it: ISO 8601, UTC, milliseconds, `Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = doc("Epoch number, counted from 1.", minimum=1)
_TOTAL_EPOCHS = doc("Epochs the job asked for.", minimum=1)
_ACC = doc("Accuracy as a fraction, 0 to 1.", minimum=0, maximum=1)
_ATTEMPT = doc("Delivery attempt of the job, counted from 1; above 1 after a retry.", minimum=1)


@frozen(kw_only=True)
class _Event:
    """Fields every event carries, so a reader can correlate it without knowing its type."""

    request_id: str = field(metadata=doc("The job's request_id; correlates every event of a job."))
    user_id: int = field(metadata=doc("The user who asked for the job; 0 when none.", minimum=0))
    model_id: str = field(metadata=doc("The model being trained."))
    run_id: str | None = field(
        default=None, metadata=doc("The training run's id; null until the run has one.")
    )
    ts: str = field(
        metadata=doc("When the event happened, ISO 8601 UTC.", pattern=TS_PATTERN, hint=_TS_HINT)
    )

    def __attrs_post_init__(self) -> None:
        raise_on_bad_fields(self)


@frozen(kw_only=True)
class TrainStarted(_Event):
    """A worker took the job and is about to train."""

    type: Literal["digits.train.started.v1"] = "digits.train.started.v1"
    total_epochs: int = field(metadata=_TOTAL_EPOCHS)
    attempt: int = field(default=1, metadata=_ATTEMPT)


@frozen(kw_only=True)
class TrainBatch(_Event):
    """Progress inside an epoch, every `EVENTS__BATCH_EVERY` batches (0 turns these off)."""

    type: Literal["digits.train.batch.v1"] = "digits.train.batch.v1"
    epoch: int = field(metadata=_EPOCH)
    total_epochs: int = field(metadata=_TOTAL_EPOCHS)
    batch: int = field(metadata=doc("Batch number within the epoch, counted from 1.", minimum=1))
    total_batches: int = field(metadata=doc("Batches in one epoch.", minimum=1))
    batch_loss: float = field(metadata=doc("Loss of this batch.", minimum=0))
    batch_acc: float = field(metadata=doc("Accuracy on this batch, 0 to 1.", minimum=0, maximum=1))
    avg_loss: float = field(metadata=doc("Mean loss over the epoch so far.", minimum=0))
    samples_per_sec: float = field(metadata=doc("Training throughput.", minimum=0))


@frozen(kw_only=True)
class TrainEpoch(_Event):
    """An epoch ended and was evaluated on the validation split."""

    type: Literal["digits.train.epoch.v1"] = "digits.train.epoch.v1"
    epoch: int = field(metadata=_EPOCH)
    total_epochs: int = field(metadata=_TOTAL_EPOCHS)
    train_loss: float = field(metadata=doc("Mean training loss of the epoch.", minimum=0))
    val_acc: float = field(metadata=_ACC)
    time_s: float = field(metadata=doc("Wall time of the epoch in seconds.", minimum=0))


@frozen(kw_only=True)
class TrainBest(_Event):
    """The epoch just ended is the best so far on validation accuracy."""

    type: Literal["digits.train.best.v1"] = "digits.train.best.v1"
    epoch: int = field(metadata=_EPOCH)
    val_acc: float = field(metadata=_ACC)


@frozen(kw_only=True)
class TrainArtifact(_Event):
    """The run's artifacts (model.pt, manifest.json, metrics.json) were written."""

    type: Literal["digits.train.artifact.v1"] = "digits.train.artifact.v1"
    path: str = field(metadata=doc("Directory of the artifacts on the worker's machine."))


@frozen(kw_only=True)
class TrainUpload(_Event):
    """The worker uploaded the artifacts to the API."""

    type: Literal["digits.train.upload.v1"] = "digits.train.upload.v1"
    status: int = field(
        metadata=doc("HTTP status of the upload request.", minimum=100, maximum=599)
    )
    model_bytes: int = field(metadata=doc("Size of model.pt in bytes.", minimum=0))
    manifest_bytes: int = field(metadata=doc("Size of manifest.json in bytes.", minimum=0))


@frozen(kw_only=True)
class TrainPrune(_Event):
    """Old runs of the model were deleted to keep the newest few."""

    type: Literal["digits.train.prune.v1"] = "digits.train.prune.v1"
    deleted_count: int = field(metadata=doc("Runs deleted.", minimum=0))


@frozen(kw_only=True)
class TrainCompleted(_Event):
    """The job finished: the model is trained and uploaded. Final: no event follows."""

    type: Literal["digits.train.completed.v1"] = "digits.train.completed.v1"
    val_acc: float = field(metadata=_ACC)
    test_acc: float | None = field(
        default=None,
        metadata=doc(
            "Accuracy on the test split, 0 to 1; null when not measured.", minimum=0, maximum=1
        ),
    )
    version: str | None = field(
        default=None,
        metadata=doc("The manifest version of the new model; the API reloads by it."),
    )
    feedback_acc: float | None = field(
        default=None,
        metadata=doc(
            "A `use_feedback` job's accuracy on the corrections it held back, 0 to 1; null"
            " otherwise.",
            minimum=0,
            maximum=1,
        ),
    )
    feedback_holdout: int = field(
        default=0, metadata=doc("How many corrections the job held back.", minimum=0)
    )


@frozen(kw_only=True)
class TrainFailed(_Event):
    """The job failed. Final unless `will_retry`: then the job is delivered again."""

    type: Literal["digits.train.failed.v1"] = "digits.train.failed.v1"
    error_kind: Literal["user", "system"] = field(
        metadata=doc(
            "`user`: the job asked for something impossible, never retried; `system`: ours."
        )
    )
    message: str = field(metadata=doc("What went wrong, readable by the user."))
    attempt: int = field(default=1, metadata=_ATTEMPT)
    will_retry: bool = field(
        default=False, metadata=doc("True when the job will be delivered again after this.")
    )
    cancelled: bool = field(
        default=False,
        metadata=doc(
            "True when the job ended because it was cancelled by request (`error_kind` is then"
            " `user`, `will_retry` false): a follower tells a cancellation from a failure."
        ),
    )


ModelAction = Literal[
    "served", "unserved", "promoted", "rolled_back", "pinned", "unpinned", "held", "refused"
]


@frozen(kw_only=True)
class ModelChanged(_Event):
    """The model registry changed: an operator served, unserved, promoted, rolled back, pinned or
    unpinned a model, or the promotion gate judged a new version (`promoted`, `held`, `refused`).
    Every API replica reconciles on it. `request_id` is the HTTP request's id for an operator's
    change, and the training job's for the gate's decision on the version that job made."""

    type: Literal["digits.model.changed.v1"] = "digits.model.changed.v1"
    action: ModelAction = field(metadata=doc("What changed."))
    by: Literal["operator", "gate"] = field(
        metadata=doc("`operator`: through the admin API; `gate`: the promotion gate's decision.")
    )
    version: str | None = field(
        default=None, metadata=doc("The version the change is about; null for (un)serve.")
    )
    old_version: str | None = field(
        default=None, metadata=doc("The version served before, when the change moved it.")
    )
    served: list[str] = field(
        metadata=doc("The served model ids after the change, in ensemble order.")
    )
    reason: str = field(default="", metadata=doc("Why, for a gate decision or a rollback."))


TrainEvent = (
    TrainStarted
    | TrainBatch
    | TrainEpoch
    | TrainBest
    | TrainArtifact
    | TrainUpload
    | TrainPrune
    | TrainCompleted
    | TrainFailed
    | ModelChanged
)


def _tag(cls: type[TrainEvent]) -> str:
    default: object = attrs.fields_dict(cls)["type"].default
    if not isinstance(default, str):
        raise TypeError(f"{cls.__name__}.type needs its literal as default")
    return default


EVENT_CLASSES: dict[str, type[TrainEvent]] = {
    _tag(cls): cls
    for cls in (
        TrainStarted,
        TrainBatch,
        TrainEpoch,
        TrainBest,
        TrainArtifact,
        TrainUpload,
        TrainPrune,
        TrainCompleted,
        TrainFailed,
        ModelChanged,
    )
}


def _structure_event(value: object, _: object) -> TrainEvent:
    # Our own tagged-union hook, not cattrs' `configure_tagged_union`: that one pops `type` from
    # the payload and answers an unknown tag with a bare KeyError.
    kind = value.get("type") if isinstance(value, dict) else None
    cls = EVENT_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"expected one of {', '.join(EVENT_CLASSES)}, got {kind!r}")
    return converter.structure(value, cls)


for _cls in EVENT_CLASSES.values():
    converter.register_structure_hook(
        _cls, make_dict_structure_fn(_cls, converter, _cattrs_forbid_extra_keys=False)
    )
converter.register_structure_hook(TrainEvent, _structure_event)


def encode_event(event: TrainEvent) -> dict[str, str]:
    """The stream entry fields for one event (every field present, keys sorted)."""
    document = json.dumps(converter.unstructure(event), sort_keys=True, separators=(",", ":"))
    return {"type": event.type, "event": document}


def _entry_errors(fields: Mapping[str, str]) -> tuple[object, list[str]]:
    raw = fields.get("event")
    if raw is None:
        return None, ["expected an 'event' field holding the event as JSON @ $"]
    try:
        data: object = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, [f"expected the event as JSON, got {raw[:80]!r} ({exc.msg}) @ $"]
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, 100,000-deep nesting
        return None, [f"expected the event as JSON, got {raw[:80]!r} ({type(exc).__name__}) @ $"]
    if not isinstance(data, dict):
        return None, [f"expected a JSON object, got {type(data).__name__} @ $"]
    kind = data.get("type")
    if kind not in EVENT_CLASSES:
        return None, [f"expected one of {', '.join(EVENT_CLASSES)}, got {kind!r} @ $.type"]
    if fields.get("type", kind) != kind:
        return None, [f"entry type {fields['type']!r} differs from the event's {kind!r} @ $.type"]
    return data, []


def decode_event(fields: Mapping[str, str]) -> TrainEvent:
    """The event in a stream entry; `ContractError` with `reason @ $.path` strings if malformed."""
    data, errors = _entry_errors(fields)
    if errors or not isinstance(data, dict):
        raise ContractError(errors)
    return structure_readable(data, EVENT_CLASSES[data["type"]])


def is_final(event: TrainEvent) -> bool:
    """No further event follows for this job (a failure that will retry is not final)."""
    if isinstance(event, TrainFailed):
        return not event.will_retry
    return isinstance(event, TrainCompleted)
