"""Jobs and events as their users write and read them: redis-cli fields, HTTP JSON, stream entries.

Event tests are parametrized over `EVENT_CLASSES`, with sample values built from each field's
type and documented limits, so a new event type is tested without writing a new test.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Literal

import attrs
import pytest
from attrs import frozen
from jsonschema import Draft202012Validator

from handwriting_ai.contracts.converter import ContractError, converter
from handwriting_ai.contracts.events import (
    EVENT_CLASSES,
    TS_PATTERN,
    TrainCompleted,
    TrainEvent,
    TrainFailed,
    TrainStarted,
    decode_event,
    encode_event,
    is_final,
    now_iso,
)
from handwriting_ai.contracts.fields import field_doc, structure_readable
from handwriting_ai.contracts.jobs import (
    TrainJob,
    dead_letter,
    dead_letter_from_fields,
    dead_letter_to_fields,
    job_from_fields,
    job_from_json,
    job_to_fields,
)
from handwriting_ai.contracts.schema_gen import BOOL_WORDS, schema_files

ENTRY_ID = "1700000000000-0"
TS = "2025-01-31T12:00:00.000Z"
ID_HINT = "letters, digits, '_', '.' or '-', starting with a letter or digit"


def parse(**fields: str) -> TrainJob:
    return job_from_fields(fields, entry_id=ENTRY_ID)


def errors_of(**fields: str) -> list[str]:
    with pytest.raises(ContractError) as caught:
        parse(**fields)
    return caught.value.errors


# --- jobs from redis-cli fields ---------------------------------------------------------------


def test_spec_example_parses_with_documented_defaults() -> None:
    # redis-cli XADD digits:train '*' model_id mnist_digitnet_v1 epochs 1
    job = parse(model_id="mnist_digitnet_v1", epochs="1")
    assert job == TrainJob(
        type="digits.train.v1",
        request_id=f"job-{ENTRY_ID}",
        user_id=0,
        model_id="mnist_digitnet_v1",
        epochs=1,
        batch_size=0,
        lr=0.003,
        seed=42,
        augment=True,
        notes="",
    )


def test_every_field_as_typed_on_the_command_line() -> None:
    job = parse(
        type="digits.train.v1",
        request_id="discord-42",
        user_id="1234567890123456789",
        model_id="mnist_digitnet_v2",
        epochs="12",
        batch_size="256",
        lr="1e-3",
        seed="7",
        augment="NO",
        notes="more rotation",
    )
    assert job.request_id == "discord-42"
    assert job.user_id == 1234567890123456789
    assert (job.epochs, job.batch_size, job.lr, job.seed) == (12, 256, 0.001, 7)
    assert job.augment is False
    assert job.notes == "more rotation"


@pytest.mark.parametrize("word", [*BOOL_WORDS, *(w.upper() for w in BOOL_WORDS)])
def test_every_boolean_spelling_the_schema_allows_parses(word: str) -> None:
    assert parse(model_id="m", augment=word).augment is (word.lower() in {"true", "1", "yes", "on"})


def test_a_typo_is_refused_naming_it() -> None:
    assert errors_of(model_id="m", epoch="3") == [
        "unknown field (known: augment, batch_size, epochs, lr, model_id, notes, request_id, "
        "seed, type, use_feedback, user_id) @ $.epoch"
    ]


def test_model_id_is_required() -> None:
    assert errors_of(epochs="1") == ["required field missing @ $.model_id"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("epochs", "abc", "expected an integer, got 'abc' @ $.epochs"),
        ("epochs", "1.5", "expected an integer, got '1.5' @ $.epochs"),
        ("augment", "maybe", "expected a boolean (true/false), got 'maybe' @ $.augment"),
        ("lr", "fast", "expected a number, got 'fast' @ $.lr"),
        ("lr", "nan", "expected a finite number, got 'nan' @ $.lr"),
        ("epochs", "0", "expected 1 to 500, got 0 @ $.epochs"),
        ("epochs", "501", "expected 1 to 500, got 501 @ $.epochs"),
        ("batch_size", "-1", "expected 0 to 8192, got -1 @ $.batch_size"),
        ("batch_size", "8193", "expected 0 to 8192, got 8193 @ $.batch_size"),
        ("lr", "0", "expected more than 0 and at most 1, got 0.0 @ $.lr"),
        ("lr", "1.5", "expected more than 0 and at most 1, got 1.5 @ $.lr"),
        ("seed", "-1", "expected 0 to 4294967295, got -1 @ $.seed"),
        ("user_id", "-5", "expected 0 to 9223372036854775807, got -5 @ $.user_id"),
        ("model_id", "../etc", f"expected 1 to 64 {ID_HINT}, got '../etc' @ $.model_id"),
        ("request_id", "a b", f"expected 1 to 128 {ID_HINT}, got 'a b' @ $.request_id"),
        ("type", "digits.train.v2", "expected 'digits.train.v1', got 'digits.train.v2' @ $.type"),
    ],
)
def test_bad_values_get_readable_messages(name: str, value: str, message: str) -> None:
    assert errors_of(**{"model_id": "m", name: value}) == [message]


def test_a_long_bad_value_is_cut_short_in_the_message() -> None:
    (message,) = errors_of(model_id="m" * 65)
    assert message.endswith(f"got {'m' * 64!r}... (65 characters) @ $.model_id")
    assert errors_of(model_id="m", notes="n" * 1001) == [
        "expected at most 1000 characters, got 1001 @ $.notes"
    ]


def test_every_problem_is_reported_at_once() -> None:
    assert errors_of(model_id="m", epoch="1", epochs="x", augment="maybe") == [
        "unknown field (known: augment, batch_size, epochs, lr, model_id, notes, request_id, "
        "seed, type, use_feedback, user_id) @ $.epoch",
        "expected an integer, got 'x' @ $.epochs",
        "expected a boolean (true/false), got 'maybe' @ $.augment",
    ]


@pytest.mark.parametrize(
    "job",
    [
        TrainJob(request_id="r1", model_id="m"),
        TrainJob(
            request_id="r.2",
            user_id=2**63 - 1,
            model_id="a.b-c_d",
            epochs=500,
            batch_size=8192,
            lr=0.1 + 0.2,
            seed=2**32 - 1,
            augment=False,
            notes="ünïcode, spaces and = signs",
            use_feedback=True,
        ),
    ],
)
def test_fields_round_trip(job: TrainJob) -> None:
    fields = job_to_fields(job)
    assert all(isinstance(v, str) for v in fields.values())
    assert job_from_fields(fields, entry_id="other-0") == job


def test_a_field_added_after_v1_is_written_only_when_set() -> None:
    """A worker that predates `use_feedback` refuses a job naming it: a job that does not use it
    must not name it (rolling upgrades, mixed worker versions)."""
    plain = job_to_fields(TrainJob(request_id="r", model_id="m"))
    assert "use_feedback" not in plain
    assert (
        job_to_fields(TrainJob(request_id="r", model_id="m", use_feedback=True))["use_feedback"]
        == "true"
    )


def test_a_job_breaking_its_limits_cannot_be_built() -> None:
    with pytest.raises(ContractError) as caught:
        TrainJob(request_id="r", model_id="m", epochs=0)
    assert caught.value.errors == ["expected 1 to 500, got 0 @ $.epochs"]


# --- jobs from HTTP JSON ----------------------------------------------------------------------


def test_json_body_with_json_values() -> None:
    body = json.loads('{"model_id": "m", "epochs": 3, "augment": false, "lr": 0.01}')
    job = job_from_json(body, default_request_id="req-1")
    assert job == TrainJob(request_id="req-1", model_id="m", epochs=3, augment=False, lr=0.01)


def test_json_body_keeps_its_own_request_id() -> None:
    job = job_from_json({"model_id": "m", "request_id": "mine"}, default_request_id="fresh")
    assert job.request_id == "mine"
    job = job_from_json({"model_id": "m", "request_id": None}, default_request_id="fresh")
    assert job.request_id == "fresh"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "expected a JSON object, got list @ $"),
        ({"model_id": "m", "epochs": 2.5}, "expected an integer, got 2.5 @ $.epochs"),
        (
            {"model_id": "m", "augment": "maybe"},
            "expected a boolean (true/false), got 'maybe' @ $.augment",
        ),
        ({"model_id": 7}, "expected a string, got 7 @ $.model_id"),
        ({"model_id": "m", "epochs": True}, "expected an integer, got True @ $.epochs"),
    ],
)
def test_bad_json_bodies(body: object, message: str) -> None:
    with pytest.raises(ContractError) as caught:
        job_from_json(body, default_request_id="r")
    assert caught.value.errors == [message]


def test_json_numbers_are_typed_as_the_schema_says() -> None:
    # JSON Schema's "integer" includes 5.0; Python's int() would also take "5", the schema not.
    job = job_from_json({"model_id": "m", "epochs": 5.0, "lr": 1}, default_request_id="r")
    assert (job.epochs, type(job.epochs), job.lr) == (5, int, 1.0)


@pytest.mark.parametrize(
    ("field_name", "value", "expected"),
    [
        ("epochs", "5", "an integer"),
        ("lr", "0.1", "a number"),
        ("augment", "true", "a boolean (true/false)"),
        ("augment", 1, "a boolean (true/false)"),
        ("lr", False, "a number"),
        ("notes", 3, "a string"),
    ],
)
def test_json_strings_are_not_numbers_or_booleans(
    field_name: str, value: object, expected: str
) -> None:
    # A stream field is always a string, so `job_from_fields` reads "5"; a JSON body has types.
    with pytest.raises(ContractError) as caught:
        job_from_json({"model_id": "m", field_name: value}, default_request_id="r")
    assert caught.value.errors == [f"expected {expected}, got {value!r} @ $.{field_name}"]
    assert job_from_fields({"model_id": "m", "epochs": "5"}, entry_id="1-0").epochs == 5


def test_a_wrongly_typed_field_does_not_hide_the_other_errors() -> None:
    with pytest.raises(ContractError) as caught:
        job_from_json({"model_id": "m", "epochs": "5", "seed": -1, "x": 1}, default_request_id="r")
    errors = caught.value.errors
    assert errors[0] == "expected an integer, got '5' @ $.epochs"
    assert any("$.seed" in e for e in errors)
    assert any("$.x" in e for e in errors)
    assert not any("$.epochs" in e for e in errors[1:])


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letter_keeps_the_original_fields_and_round_trips() -> None:
    original = {"model_id": "m", "epochs": "abc"}
    letter = dead_letter(
        original, entry_id=ENTRY_ID, reason="expected an integer", deliveries=1, ts=TS
    )
    assert letter.request_id == f"job-{ENTRY_ID}"
    assert json.loads(letter.entry_fields) == original
    assert dead_letter_from_fields(dead_letter_to_fields(letter)) == letter


# --- events -----------------------------------------------------------------------------------

SAMPLE_STRINGS = ("text", TS)


def _sample(tp: object, attribute: attrs.Attribute[object]) -> object:
    """A valid value for a field, from its type and documented limits."""
    d = field_doc(attribute)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        return args[0]
    if type(None) in args:
        return _sample(next(a for a in args if a is not type(None)), attribute)
    if tp is bool:
        return False
    if tp is int or tp is float:
        low = (d.minimum if d else None) or 1
        return tp(low if d is None or d.maximum is None else min(low, d.maximum))
    if tp is str:
        pattern = d.pattern if d else None
        return next(s for s in SAMPLE_STRINGS if pattern is None or re.fullmatch(pattern, s))
    if typing.get_origin(tp) is list:
        return [_sample(args[0], attribute)]
    raise TypeError(f"no sample for {tp!r}")


def sample_event(cls: type[TrainEvent]) -> TrainEvent:
    hints = typing.get_type_hints(cls)
    data = {a.name: _sample(hints[a.name], a) for a in attrs.fields(cls)}
    return structure_readable(data, cls)


EVENT_TYPES = sorted(EVENT_CLASSES)


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_event_encodes_to_type_and_one_json_document(kind: str) -> None:
    event = sample_event(EVENT_CLASSES[kind])
    fields = encode_event(event)
    assert set(fields) == {"type", "event"}
    assert fields["type"] == kind
    document = json.loads(fields["event"])
    assert document["type"] == kind
    assert set(document) == {a.name for a in attrs.fields(type(event))}


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_event_decodes_back_to_an_equal_object(kind: str) -> None:
    event = sample_event(EVENT_CLASSES[kind])
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_event_fits_its_generated_json_schema(kind: str) -> None:
    schema = schema_files()[f"{kind}.json"]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    document = json.loads(encode_event(sample_event(EVENT_CLASSES[kind]))["event"])
    validator.validate(document)
    assert not validator.is_valid({**document, "user_id": "not a number"})
    assert not validator.is_valid({**document, "type": "digits.train.other.v1"})


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_event_reader_ignores_fields_it_does_not_know(kind: str) -> None:
    event = sample_event(EVENT_CLASSES[kind])
    document = {**json.loads(encode_event(event)["event"]), "added_later": 1}
    assert decode_event({"type": kind, "event": json.dumps(document)}) == event


@frozen
class _Envelope:
    """Any message holding an event, e.g. a status snapshot with the job's last event."""

    last: TrainEvent


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_the_union_on_the_converter_picks_the_class_by_type(kind: str) -> None:
    envelope = _Envelope(last=sample_event(EVENT_CLASSES[kind]))
    assert converter.structure(converter.unstructure(envelope), _Envelope) == envelope


def test_the_union_on_the_converter_names_an_unknown_type() -> None:
    with pytest.raises(ContractError) as caught:
        structure_readable({"last": {"type": "digits.train.nope.v1"}}, _Envelope)
    assert caught.value.errors == [
        "expected one of " + ", ".join(EVENT_CLASSES) + ", got 'digits.train.nope.v1' @ $.last"
    ]


def _started_document(**changes: object) -> str:
    document = json.loads(encode_event(sample_event(TrainStarted))["event"])
    return json.dumps({**document, **changes})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"type": "digits.train.started.v1"},
            "expected an 'event' field holding the event as JSON @ $",
        ),
        (
            {"event": "{nope"},
            "expected the event as JSON, got '{nope' "
            "(Expecting property name enclosed in double quotes) @ $",
        ),
        ({"event": "[]"}, "expected a JSON object, got list @ $"),
        (
            {"event": _started_document(type="digits.train.nope.v1")},
            "expected one of digits.train.started.v1, digits.train.batch.v1, "
            "digits.train.epoch.v1, digits.train.best.v1, digits.train.artifact.v1, "
            "digits.train.upload.v1, digits.train.prune.v1, digits.train.completed.v1, "
            "digits.train.failed.v1, digits.model.changed.v1, got 'digits.train.nope.v1' @ $.type",
        ),
        (
            {"type": "digits.train.best.v1", "event": _started_document()},
            "entry type 'digits.train.best.v1' differs from the event's "
            "'digits.train.started.v1' @ $.type",
        ),
        (
            {"event": _started_document(total_epochs="x")},
            "expected an integer, got 'x' @ $.total_epochs",
        ),
        (
            {"event": _started_document(total_epochs=0)},
            "expected at least 1, got 0 @ $.total_epochs",
        ),
        (
            {"event": _started_document(ts="yesterday")},
            "expected an ISO 8601 UTC timestamp like 2025-01-31T12:00:00.000Z, "
            "got 'yesterday' @ $.ts",
        ),
        ({"event": _started_document(run_id=5)}, "expected a string, got 5 @ $.run_id"),
    ],
)
def test_malformed_event_entries_get_readable_messages(
    fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ContractError) as caught:
        decode_event(fields)
    assert caught.value.errors == [message]


def test_failed_event_names_the_allowed_error_kinds() -> None:
    document = json.loads(encode_event(sample_event(TrainFailed))["event"])
    with pytest.raises(ContractError) as caught:
        decode_event({"event": json.dumps({**document, "error_kind": "cosmic"})})
    assert caught.value.errors == ["expected 'user' or 'system' @ $.error_kind"]


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_only_completed_and_failed_are_final(kind: str) -> None:
    event = sample_event(EVENT_CLASSES[kind])
    assert is_final(event) is isinstance(event, TrainCompleted | TrainFailed)


def test_a_failure_that_will_retry_is_not_final() -> None:
    failed = sample_event(TrainFailed)
    assert isinstance(failed, TrainFailed)
    assert is_final(failed)
    assert not is_final(attrs.evolve(failed, will_retry=True))


def test_now_iso_is_a_valid_ts() -> None:
    ts = now_iso()
    assert re.fullmatch(TS_PATTERN, ts)
    assert TrainStarted(request_id="r", user_id=0, model_id="m", ts=ts, total_epochs=1).ts == ts
