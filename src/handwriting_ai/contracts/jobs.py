"""The training job `digits.train.v1`: one attrs class, read from flat stream fields or HTTP JSON.

On the stream a job is flat string fields, so that an operator can type one:
`redis-cli XADD digits:train '*' model_id mnist_digitnet_v1 epochs 1`. Omitted fields take the
defaults below; a missing `request_id` is derived from the entry id. Jobs are read strictly: an
unknown field (a typo like `epoch`) is an error, never a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

import attrs
from attrs import field, frozen

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TS_PATTERN
from handwriting_ai.contracts.fields import (
    doc,
    raise_on_bad_fields,
    structure_readable,
    to_fields,
)

JOB_TYPE = "digits.train.v1"
MAX_EPOCHS = 500
MAX_BATCH_SIZE = 8192
MAX_NOTES_CHARS = 1000
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_HINT = "{n} letters, digits, '_', '.' or '-', starting with a letter or digit"


@frozen(kw_only=True)
class TrainJob:
    """A request to train one model; `model_id` is the only field without a default."""

    type: Literal["digits.train.v1"] = field(
        default="digits.train.v1", metadata=doc("Message type.")
    )
    request_id: str = field(
        metadata=doc(
            "Correlates the job's events; on the stream, omitted means `job-<entry id>`.",
            pattern=REQUEST_ID_PATTERN,
            hint=_ID_HINT.format(n="1 to 128"),
        )
    )
    user_id: int = field(
        default=0, metadata=doc("The user who asked; 0 for none.", minimum=0, maximum=2**63 - 1)
    )
    model_id: str = field(
        metadata=doc(
            "The model to train; its artifacts go under this name.",
            pattern=SAFE_ID_PATTERN,
            hint=_ID_HINT.format(n="1 to 64"),
        )
    )
    epochs: int = field(default=1, metadata=doc("Epochs to train.", minimum=1, maximum=MAX_EPOCHS))
    batch_size: int = field(
        default=0,
        metadata=doc("Batch size; 0 means auto.", minimum=0, maximum=MAX_BATCH_SIZE),
    )
    lr: float = field(default=0.003, metadata=doc("Learning rate.", exclusive_minimum=0, maximum=1))
    seed: int = field(
        default=42, metadata=doc("Random seed of the run.", minimum=0, maximum=2**32 - 1)
    )
    augment: bool = field(default=True, metadata=doc("Train on augmented images."))
    notes: str = field(
        default="", metadata=doc("Free text kept in the manifest.", max_length=MAX_NOTES_CHARS)
    )
    use_feedback: bool = field(
        default=False,
        metadata=doc(
            "Mix the corrections on `digits:feedback` into training, holding some back to"
            " measure the new version on them (`feedback_acc`)."
        ),
    )

    def __attrs_post_init__(self) -> None:
        raise_on_bad_fields(self)


JOB_FIELDS = tuple(a.name for a in attrs.fields(TrainJob))


def _parse(data: Mapping[str, object]) -> TrainJob:
    """Every problem at once: unknown fields, then type and range errors of the known ones."""
    unknown = sorted(set(data) - set(JOB_FIELDS))
    errors = [f"unknown field (known: {', '.join(sorted(JOB_FIELDS))}) @ $.{k}" for k in unknown]
    kind = data.get("type", JOB_TYPE)
    if kind != JOB_TYPE:
        # Checked here to name what was sent (a v2 job on a v1 worker) and still report the rest.
        errors.append(f"expected {JOB_TYPE!r}, got {kind!r} @ $.type")
    known = {k: v for k, v in data.items() if k in JOB_FIELDS and k != "type"}
    try:
        job = structure_readable(known, TrainJob)
    except ContractError as exc:
        raise ContractError(errors + exc.errors) from None
    if errors:
        raise ContractError(errors)
    return job


def job_from_fields(fields: Mapping[str, str], *, entry_id: str) -> TrainJob:
    """The job in a `digits:train` entry; a missing `request_id` becomes `job-<entry id>`."""
    undecodable = sorted(ascii(k) for k, v in fields.items() if not (_utf8(k) and _utf8(v)))
    if undecodable:
        # A reader decodes with `surrogateescape`, so bytes that are not UTF-8 arrive here.
        raise ContractError([f"expected UTF-8 text @ $.{name}" for name in undecodable])
    data: dict[str, object] = dict(fields)
    data.setdefault("request_id", f"job-{entry_id}")
    return _parse(data)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def job_from_json(obj: object, *, default_request_id: str) -> TrainJob:
    """The job in an HTTP body (JSON values); the caller supplies an id for when it has none."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ContractError([f"expected a JSON object, got {type(obj).__name__} @ $"])
    data: dict[str, object] = {str(k): v for k, v in obj.items()}
    if data.get("request_id") is None:  # JSON clients send null for "none"
        data["request_id"] = default_request_id
    # JSON has types, and the published schema says which: `"5"` for `epochs` is refused here,
    # though a stream field (always a string) reads it. `5.0` is an integer, as in JSON Schema.
    errors: dict[str, str] = {}
    for name, value in data.items():
        typed = _json_typed(value, _JSON_TYPES.get(name))
        if typed is _WRONG:
            errors[name] = (
                f"expected {_JSON_TYPE_NAMES[_JSON_TYPES[name]]}, got {value!r} @ $.{name}"
            )
        else:
            data[name] = typed
    if not errors:
        return _parse(data)
    try:
        _parse({k: (_PLACEHOLDER[k] if k in errors else v) for k, v in data.items()})
    except ContractError as exc:
        raise ContractError(list(errors.values()) + exc.errors) from None
    raise ContractError(list(errors.values()))


_FIELDS = attrs.fields(attrs.resolve_types(TrainJob))
_JSON_TYPES: dict[str, type] = {
    a.name: a.type for a in _FIELDS if a.type in (int, float, bool, str)
}
_JSON_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "a boolean (true/false)",
    str: "a string",
}
# Stand-ins for wrongly typed fields, so that the rest is still checked and reported at once (the
# two required fields are strings; "x" passes their patterns).
_PLACEHOLDER: dict[str, object] = {
    a.name: "x" if a.default is attrs.NOTHING else a.default for a in _FIELDS
}
_WRONG = object()


def _json_typed(value: object, kind: type | None) -> object:
    """`value` as `kind` when JSON Schema calls it one, else `_WRONG`; no `kind`: unchanged."""
    if kind is None:
        return value
    if kind is bool:
        return value if isinstance(value, bool) else _WRONG
    if isinstance(value, bool):
        return _WRONG  # Python's bool is an int; JSON's is not
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _WRONG
    if kind is float:
        return value if isinstance(value, int | float) else _WRONG
    return value if isinstance(value, str) else _WRONG


# Fields added after v1 shipped, written only when not their default: a worker that predates
# one reads jobs strictly and would refuse every job naming it, during a rolling upgrade too.
_ADDED_FIELDS = ("use_feedback",)


def job_to_fields(job: TrainJob) -> dict[str, str]:
    """Flat string fields for XADD; `job_from_fields` reads them back to an equal job."""
    fields = to_fields(job)
    defaults = to_fields(TrainJob(request_id=job.request_id, model_id=job.model_id))
    for name in _ADDED_FIELDS:
        if fields[name] == defaults[name]:
            del fields[name]
    return fields


@frozen(kw_only=True)
class DeadLetter:
    """A job entry that will not run, moved to `digits:train:dead` with the reason."""

    entry_id: str = field(metadata=doc("The entry's id in digits:train."))
    request_id: str = field(metadata=doc("The job's request_id, or `job-<entry id>`."))
    reason: str = field(metadata=doc("Why: the readable `reason @ $.path` errors, `; `-joined."))
    deliveries: int = field(metadata=doc("Times the entry was delivered.", minimum=1))
    ts: str = field(metadata=doc("When it was dead-lettered, ISO 8601 UTC.", pattern=TS_PATTERN))
    entry_fields: str = field(metadata=doc("The entry's original fields as one JSON object."))

    def __attrs_post_init__(self) -> None:
        raise_on_bad_fields(self)


def dead_letter(
    fields: Mapping[str, str],
    *,
    entry_id: str,
    reason: str,
    deliveries: int,
    ts: str,
    request_id: str | None = None,
) -> DeadLetter:
    """Keep the original fields verbatim (they may be the problem) beside the reason;
    `request_id` is the one the job's events used (a malformed one is replaced)."""
    return DeadLetter(
        entry_id=entry_id,
        request_id=request_id or fields.get("request_id") or f"job-{entry_id}",
        reason=reason,
        deliveries=deliveries,
        ts=ts,
        entry_fields=json.dumps(dict(fields), sort_keys=True),
    )


def dead_letter_to_fields(letter: DeadLetter) -> dict[str, str]:
    return to_fields(letter)


def dead_letter_from_fields(fields: Mapping[str, str]) -> DeadLetter:
    return structure_readable(dict(fields), DeadLetter)
