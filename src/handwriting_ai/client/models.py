"""What the API answers, as frozen attrs classes, read tolerantly: a field the service adds later
is ignored, a missing or mistyped one is a `bad_response` (see `wire.py`)."""

from __future__ import annotations

from attrs import frozen
from cattrs.gen import make_dict_structure_fn

from handwriting_ai.contracts.converter import converter
from handwriting_ai.registry.actions import RegistryChange
from handwriting_ai.registry.listing import ModelEntry, RegistryListing, VersionEntry


@frozen
class Reading:
    """The `/v1/read` answer; `request_id` is the one the service logged it under."""

    digit: int
    confidence: float
    probs: tuple[float, ...]
    model_id: str
    uncertain: bool
    visual_png_b64: str | None
    request_id: str

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The `k` most probable digits, most probable first (a tie: the smaller digit first)."""
        ranked = sorted(enumerate(self.probs), key=lambda pair: (-pair[1], pair[0]))
        return ranked[: max(0, k)]


@frozen
class TrainAccepted:
    """`POST /v1/train`'s 202: `duplicate` when a job with this request_id was already queued."""

    request_id: str
    entry_id: str
    status: str
    duplicate: bool
    status_url: str
    events_url: str


@frozen
class TrainStatus:
    """A job's status (`GET /v1/train/{request_id}`, and the cancel answer)."""

    request_id: str
    model_id: str
    user_id: int
    status: str
    attempts: int
    progress: dict[str, object]
    result: dict[str, object]
    error_kind: str
    message: str
    created_at: str
    updated_at: str
    worker: str
    retry_at: str
    cancel_requested: bool
    crashes: int
    failures: int
    entry_id: str = ""  # the job's entry in `digits:train` ("" from a service that predates it)


@frozen
class FeedbackAccepted:
    """`POST /v1/feedback`'s 201: the correction is on `digits:feedback` as `entry_id`."""

    request_id: str
    label: int
    predicted: int
    entry_id: str


def _json_object(value: object, _: object) -> dict[str, object]:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {str(k): v for k, v in value.items()}
    raise ValueError(f"expected a JSON object, got {value!r}")


# `progress` and `result` are free-form JSON objects: kept as the service sent them.
converter.register_structure_hook_func(lambda t: t == dict[str, object], _json_object)
# The registry's answers are the service's own classes (no torch behind them), read tolerantly.
for _cls in (
    Reading,
    TrainAccepted,
    TrainStatus,
    FeedbackAccepted,
    RegistryChange,
    RegistryListing,
    ModelEntry,
    VersionEntry,
):
    converter.register_structure_hook(
        _cls, make_dict_structure_fn(_cls, converter, _cattrs_forbid_extra_keys=False)
    )

__all__ = [
    "FeedbackAccepted",
    "ModelEntry",
    "Reading",
    "RegistryChange",
    "RegistryListing",
    "TrainAccepted",
    "TrainStatus",
    "VersionEntry",
]
