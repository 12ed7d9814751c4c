"""The AsyncAPI 3.0 document of the streams (`streams/asyncapi.json`), written by `schema_gen`.

Channels are the Redis streams (a job's own event stream is a parameterised address), messages
refer to the generated JSON Schemas, operations say who XADDs and who reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from handwriting_ai.contracts.events import EVENT_CLASSES
from handwriting_ai.contracts.feedback import FEEDBACK_TYPE, Correction
from handwriting_ai.contracts.fields import JSON
from handwriting_ai.contracts.jobs import JOB_TYPE, DeadLetter, TrainJob
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    FEEDBACK_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    job_events_key,
)


def _docstring(cls: type) -> str:
    return (cls.__doc__ or "").strip()


def _ref(path: str) -> dict[str, JSON]:
    return {"$ref": path}


def _event_entry(kind: str, schemas_dir: str) -> dict[str, JSON]:
    return {
        "type": "object",
        "required": ["type", "event"],
        "properties": {
            "type": {"type": "string", "const": kind},
            "event": {
                "type": "string",
                "description": "The whole event as one JSON document.",
                "contentMediaType": "application/json",
                "contentSchema": _ref(f"./{schemas_dir}/{kind}.json"),
            },
        },
    }


def _message(name: str, summary: str, payload: dict[str, JSON]) -> dict[str, JSON]:
    return {"name": name, "title": name, "summary": summary, "payload": payload}


def asyncapi_document(schemas_dir: str) -> dict[str, JSON]:
    """The streams, their messages and who sends or receives what, as AsyncAPI 3.0; payloads
    refer to the JSON Schemas in `schemas_dir`."""
    messages: dict[str, JSON] = {
        JOB_TYPE: _message(
            JOB_TYPE,
            _docstring(TrainJob),
            _ref(f"./{schemas_dir}/{JOB_TYPE}.fields.json"),
        ),
        FEEDBACK_TYPE: _message(
            FEEDBACK_TYPE,
            _docstring(Correction),
            _ref(f"./{schemas_dir}/{FEEDBACK_TYPE}.fields.json"),
        ),
        "digits.train.dead": _message(
            "digits.train.dead",
            _docstring(DeadLetter),
            _ref(f"./{schemas_dir}/digits.train.dead.fields.json"),
        ),
    }
    for kind, cls in EVENT_CLASSES.items():
        messages[kind] = _message(kind, _docstring(cls), _event_entry(kind, schemas_dir))

    def channel_messages(names: Sequence[str]) -> dict[str, JSON]:
        return {n: _ref(f"#/components/messages/{n}") for n in names}

    def operation(action: str, channel: str, names: Sequence[str], summary: str) -> JSON:
        refs: list[JSON] = [_ref(f"#/channels/{channel}/messages/{n}") for n in names]
        return {
            "action": action,
            "channel": _ref(f"#/channels/{channel}"),
            "summary": summary,
            "messages": refs,
        }

    events = list(EVENT_CLASSES)
    group = f"consumer group {JOBS_GROUP}"
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "handwriting-ai streams",
            "version": "1.0.0",
            "description": "Training jobs, their events, corrections and dead letters on Redis "
            "Streams. "
            "Generated from handwriting_ai.contracts; see streams/README.md.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "The Redis named by REDIS_URL.",
            }
        },
        "channels": {
            "jobs": {
                "address": JOBS_STREAM,
                "title": "Training jobs",
                "description": f"Read by workers in the {group}; an entry is acknowledged "
                "once its result is stored.",
                "messages": channel_messages([JOB_TYPE]),
            },
            "events": {
                "address": EVENTS_STREAM,
                "title": "Training events",
                "description": "Progress and outcome of every job, in order, for any reader.",
                "messages": channel_messages(events),
            },
            "jobEvents": {
                "address": job_events_key("{request_id}"),
                "title": "One job's events",
                "description": "The same entries as the events stream, for one job, from its "
                "first event; kept as long as the job's status. SSE replays it (the SSE id is "
                "the entry id here) and `digits watch` reads it.",
                "parameters": {"request_id": {"description": "The job's request_id."}},
                "messages": channel_messages(events),
            },
            "feedback": {
                "address": FEEDBACK_STREAM,
                "title": "Corrections",
                "description": "One per corrected read, with the sample the models saw; read "
                "whole by jobs with use_feedback.",
                "messages": channel_messages([FEEDBACK_TYPE]),
            },
            "deadLetters": {
                "address": DEAD_STREAM,
                "title": "Dead letters",
                "description": "Job entries that will not run: malformed, or delivered too often.",
                "messages": channel_messages(["digits.train.dead"]),
            },
        },
        "operations": {
            "enqueueJob": operation(
                "send", "jobs", [JOB_TYPE], f"XADD {JOBS_STREAM} * model_id ... (API, redis-cli)"
            ),
            "consumeJob": operation(
                "receive",
                "jobs",
                [JOB_TYPE],
                f"XREADGROUP GROUP {JOBS_GROUP} <consumer> STREAMS {JOBS_STREAM} > ; XAUTOCLAIM "
                "takes over entries of a worker that died; XACK after the result is stored.",
            ),
            "publishEvent": operation(
                "send", "events", events, f"XADD {EVENTS_STREAM} * (workers)"
            ),
            "followEvents": operation(
                "receive", "events", events, f"XREAD BLOCK 0 STREAMS {EVENTS_STREAM} $ (bot, API)"
            ),
            "publishJobEvent": operation(
                "send", "jobEvents", events, "XADD with the events stream's entry (workers)"
            ),
            "replayJobEvents": operation(
                "receive",
                "jobEvents",
                events,
                "XRANGE from the start or after Last-Event-ID, then XREAD (API SSE, digits watch)",
            ),
            "addCorrection": operation(
                "send", "feedback", [FEEDBACK_TYPE], f"XADD {FEEDBACK_STREAM} MAXLEN ~ (API)"
            ),
            "readCorrections": operation(
                "receive",
                "feedback",
                [FEEDBACK_TYPE],
                f"XRANGE {FEEDBACK_STREAM} - + (workers, for a use_feedback job; the API's gate)",
            ),
            "deadLetterJob": operation(
                "send", "deadLetters", ["digits.train.dead"], f"XADD {DEAD_STREAM} * (workers)"
            ),
        },
        "components": {"messages": messages},
    }
