"""The promotion gate holds a version that reads held-back corrections worse than the served
version does, measured on the same samples (taken from `digits:feedback` by the manifests'
`feedback_holdout` ids: the candidate's run's and the served version's run's); a version that
reads them as well is promoted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from redis import Redis
from redis.typing import EncodableT, FieldT

import stream_helpers
from conftest import Serve
from handwriting_ai.contracts.events import now_iso
from handwriting_ai.contracts.feedback import Correction, correction_fields, encode_sample
from helpers import Client, json_of, make_settings, write_artifact
from stream_helpers import completed, publish

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

MODEL = "tiny_a"
V1, V2, V3, V4 = (f"2025010{d}T000000Z" for d in range(1, 5))
HELD_BACK = [f"read-{i}" for i in range(5)]


def _with(**fields: object) -> Callable[[dict[str, object]], None]:
    return lambda manifest: manifest.update(fields)


def _versions(client: Client) -> dict[str, dict[str, object]]:
    body = json_of(client.get("/v1/models"))
    assert isinstance(body, dict)
    [entry] = [m for m in body["models"] if m["model_id"] == MODEL]
    return {v["version"]: v for v in entry["versions"]}


def _decision(client: Client, version: str) -> object:
    return _versions(client).get(version, {}).get("decision")


def _served(client: Client) -> str:
    body = json_of(client.get("/v1/models/active"))
    assert isinstance(body, dict)
    return str(body["members"][0]["version"])


def test_a_version_worse_on_its_held_back_corrections_is_held(
    serve: Serve, tmp_path: Path, redis_url: str
) -> None:
    model_dir = tmp_path / "models"
    # v1 (served) reads everything as 3; the held-back corrections say 3.
    write_artifact(model_dir, MODEL, seed=1, prefer=3, version=V1)
    rng = np.random.default_rng(0)
    with Redis.from_url(redis_url, decode_responses=True) as r:
        for rid in [*HELD_BACK, "read-other"]:
            pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            correction = Correction(
                request_id=rid,
                label=3,
                predicted=3,
                confidence=0.5,
                model_id=MODEL,
                ts=now_iso(),
                sample=encode_sample(pixels),
            )
            fields: dict[FieldT, EncodableT] = dict(correction_fields(correction).items())
            r.xadd("digits:feedback", fields)
    env = {"REDIS_URL": redis_url, "DIGITS__RECONCILE_INTERVAL_S": "600"}
    client = serve(make_settings(model_dir, [MODEL], env))
    assert _served(client) == V1
    # v2: better on MNIST validation, but it reads every held-back correction as 8.
    holdout = _with(val_acc=0.995, feedback_holdout=HELD_BACK, feedback_acc=0.0, feedback_count=9)
    write_artifact(model_dir, MODEL, seed=2, prefer=8, version=V2, edit=holdout)
    publish(redis_url, completed("job-2", MODEL, version=V2, val_acc=0.995))
    stream_helpers.wait_for(lambda: _decision(client, V2) is not None, what="v2 judged")
    v2 = _versions(client)[V2]
    assert v2["decision"] == "held"
    assert "on 5 held-back corrections it reads 0.0000" in str(v2["reason"])
    assert "below the served version's 1.0000" in str(v2["reason"])
    assert _served(client) == V1
    # v3 reads them as 3, like the served version: promoted.
    write_artifact(model_dir, MODEL, seed=3, prefer=3, version=V3, edit=holdout)
    publish(redis_url, completed("job-3", MODEL, version=V3, val_acc=0.995))
    stream_helpers.wait_for(lambda: _served(client) == V3, what="v3 promoted")
    assert _versions(client)[V3]["decision"] == "promoted"
    # v4 was trained without corrections (no held-back ids of its own): it is still measured on
    # the served version's, and held, rather than losing what v3 learnt.
    write_artifact(model_dir, MODEL, seed=4, prefer=8, version=V4, edit=_with(val_acc=0.999))
    publish(redis_url, completed("job-4", MODEL, version=V4, val_acc=0.999))
    stream_helpers.wait_for(lambda: _decision(client, V4) is not None, what="v4 judged")
    assert _versions(client)[V4]["decision"] == "held"
    assert _served(client) == V3
