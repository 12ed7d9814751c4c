"""Every Redis key, stream and group name the service uses, in one place, so none is typed twice.

Durations are seconds (`_S`). Per-job keys take the job's `request_id`; per-worker keys take the
consumer name the worker uses in the group.
"""

from __future__ import annotations

JOBS_STREAM = "digits:train"
JOBS_GROUP = "digits-workers"
DEAD_STREAM = "digits:train:dead"
EVENTS_STREAM = "digits:events"
FEEDBACK_STREAM = "digits:feedback"  # corrections (`contracts/feedback.py`), trimmed MAXLEN ~

# Defaults; the settings object may override them.
STATUS_TTL_S = 7 * 24 * 3600  # long enough for a user to ask "what happened to my job?"
IDEMPOTENCY_TTL_S = 24 * 3600  # how long a repeated request_id counts as a duplicate
HEALTH_TTL_S = 60  # a worker that stops refreshing its health key disappears within a minute


def status_key(request_id: str) -> str:
    """Hash with the job's current state, kept `STATUS_TTL_S` after its last change."""
    return f"digits:job:{request_id}"


def job_events_key(request_id: str) -> str:
    """The job's own copy of its events: SSE replays a job from its start without scanning the
    shared stream, and the copy expires with the job's status."""
    return f"digits:events:job:{request_id}"


RETRY_ZSET = "digits:train:retry"  # system failures waiting for their backoff; score = due, ms


def idempotency_key(request_id: str) -> str:
    """Idempotency marker (SET NX): a request_id delivered again is not run twice."""
    return f"digits:seen:{request_id}"


def worker_health_key(consumer: str) -> str:
    """A worker's health line (counters, current job), refreshed with a `HEALTH_TTL_S` expiry."""
    return f"digits:worker:{consumer}:health"


LEASE_PREFIX, LEASE_SUFFIX = "digits:worker:", ":lease"


def worker_lease_key(consumer: str) -> str:
    """A worker's lease, refreshed by every heartbeat with a short expiry: while it exists the
    worker is alive, and no other worker takes its entries, however idle they look."""
    return f"{LEASE_PREFIX}{consumer}{LEASE_SUFFIX}"


def job_lock_key(request_id: str) -> str:
    """Which entry of a job is running now (`<consumer> <entry id>`), kept alive by the running
    worker's heartbeat: a second entry with the same request_id does not train it twice."""
    return f"digits:train:lock:{request_id}"


# The model registry (`registry/redis_state.py`): Redis is the state every API replica shares.
MODELS_SET = "digits:models"  # every model id with a stored version
MODELS_SERVED_KEY = "digits:models:served"  # the served model ids in order, as a JSON list


def model_state_key(model_id: str) -> str:
    """Hash: `current`, `pinned`, `history` (JSON list) and `gate` (the gate record, JSON)."""
    return f"digits:model:{model_id}"


def model_versions_key(model_id: str) -> str:
    """Hash: version -> its manifest.json. A version is stored once it is here."""
    return f"digits:model:{model_id}:versions"


def model_metrics_key(model_id: str) -> str:
    """Hash: version -> its metrics.json."""
    return f"digits:model:{model_id}:metrics"


def model_blob_key(model_id: str, version: str) -> str:
    """String: the version's model.pt, written before its manifest enters the versions hash."""
    return f"digits:model:{model_id}:blob:{version}"


def registry_lock_key(name: str) -> str:
    """One replica at a time changes a model id's state (or, for `served`, the served set)."""
    return f"digits:model:{name}:lock"


def read_sample_key(request_id: str) -> str:
    """String (JSON): a read's 28x28 sample (base64), digit, confidence and model, kept
    `FEEDBACK__SAMPLE_TTL_S` for a correction."""
    return f"digits:read:{request_id}"


def read_corrected_key(request_id: str) -> str:
    """The label a read was corrected as (SET NX: one correction per read), kept as long."""
    return f"digits:read:{request_id}:corrected"


def feedback_rate_key(client: str, minute: int) -> str:
    """Corrections from one client in one minute (INCR, expires with the minute)."""
    return f"digits:feedback:rate:{client}:{minute}"
