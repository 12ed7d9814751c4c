"""Hot reload through the events stream: the promotion gate both ways (and its floor), broken
candidates, and no failed read while the served model is swapped."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import stream_helpers
from conftest import Serve
from handwriting_ai.api.schemas import ActiveModels
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.promotion import GateRecord, should_promote
from handwriting_ai.inference.store import MODEL_FILE, version_dir
from helpers import Client, json_of, make_settings, png_bytes, post_read, seven, write_artifact
from stream_helpers import completed, publish, wait_for

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
V1, V2 = "20250101T000000Z", "20250102T000000Z"


def _val_acc(value: float) -> Callable[[dict[str, object]], None]:
    return lambda manifest: manifest.update(val_acc=value)


def _candidate(model_dir: Path, model_id: str, *, prefer: int, val_acc: float) -> None:
    """A stored v2 that CURRENT does not name, appearing whole as an upload stores it (never
    named by CURRENT on the way, which a replica's reconcile pass would follow)."""
    staging = model_dir.parent / f"staging-{model_id}"
    write_artifact(staging, model_id, seed=5, prefer=prefer, version=V2, edit=_val_acc(val_acc))
    os.replace(version_dir(staging, model_id, V2), version_dir(model_dir, model_id, V2))


@pytest.mark.parametrize(
    ("candidate", "served", "best", "promotes"),
    [
        (0.989, 0.99, None, True),  # within the tolerance of the served version
        (0.988, 0.99, None, True),  # exactly at the bar (float rounding absorbed)
        (0.9879, 0.99, None, False),  # just below it
        (0.995, 0.99, None, True),
        (0.5, None, None, True),  # nothing served, no history: anything loadable
        (0.9870, 0.9885, 0.99, False),  # within tolerance of the served, not of the best
        (0.9881, 0.9885, 0.99, True),
        (0.9879, None, 0.99, False),  # the floor holds with nothing served
    ],
)
def test_the_gate_around_the_tolerance(
    candidate: float, served: float | None, best: float | None, promotes: bool
) -> None:
    assert should_promote(candidate, served, 0.002, best) is promotes


def test_a_sequence_of_small_losses_stops_at_the_floor() -> None:
    """0.99 -> 0.9885 -> 0.9870: each step is within 0.002 of the last, but the slide stops."""
    record, served = GateRecord().served("v1", 0.99), 0.99
    taken = []
    for version, acc in [("v2", 0.9885), ("v3", 0.9870), ("v4", 0.9866), ("v5", 0.9880)]:
        if should_promote(acc, served, 0.002, record.best_val_acc):
            record, served = record.served(version, acc), acc
            taken.append(version)
    assert taken == ["v2", "v5"]
    assert (record.best_val_acc, record.best_version, served) == (0.99, "v1", 0.9880)


def _active(client: Client) -> ActiveModels:
    return structure(json_of(client.get("/v1/models/active")), ActiveModels)


def _served(client: Client, model_id: str) -> str | None:
    return next((m.version for m in _active(client).members if m.model_id == model_id), None)


def _digit(client: Client) -> int:
    body = json_of(post_read(client, png_bytes(seven())))
    assert isinstance(body, dict)
    digit = body["digit"]
    assert isinstance(digit, int)
    return digit


def _start(serve: Serve, model_dir: Path, url: str, active: list[str]) -> Client:
    return serve(make_settings(model_dir, active, {"REDIS_URL": url}))


def test_better_version_is_promoted_and_served(
    serve: Serve, model_dir: Path, redis_url: str
) -> None:
    write_artifact(model_dir, "tiny_a", seed=1, prefer=3, version=V1)
    client = _start(serve, model_dir, redis_url, ["tiny_a"])
    assert _digit(client) == 3
    _candidate(model_dir, "tiny_a", prefer=8, val_acc=0.995)
    before = _active(client).models
    assert [(v.version, v.role) for v in before[0].versions] == [
        (V1, "current"),
        (V2, "candidate"),
    ]
    publish(redis_url, completed("r1", "tiny_a", version=V2, val_acc=0.995))
    wait_for(lambda: _served(client, "tiny_a") == V2, what="v2 to be served")
    assert _digit(client) == 8
    (model,) = _active(client).models
    assert model.served_version == V2
    assert [(v.version, v.val_acc, v.role) for v in model.versions] == [
        (V1, 0.99, "candidate"),
        (V2, 0.995, "current"),
    ]
    assert (model_dir / "tiny_a" / "CURRENT").read_text().strip() == V2


def test_worse_or_broken_versions_stay_candidates(
    serve: Serve, model_dir: Path, redis_url: str
) -> None:
    write_artifact(model_dir, "tiny_a", seed=1, prefer=3, version=V1)
    write_artifact(model_dir, "tiny_b", seed=2, prefer=3, version=V1)
    write_artifact(model_dir, "tiny_c", seed=3, prefer=3, version=V1)
    client = _start(serve, model_dir, redis_url, ["tiny_a", "tiny_b", "tiny_c"])
    _candidate(model_dir, "tiny_a", prefer=8, val_acc=0.95)  # worse by more than 0.002
    _candidate(model_dir, "tiny_b", prefer=8, val_acc=0.999)
    (model_dir / "tiny_b" / V2 / MODEL_FILE).write_bytes(b"not a state dict")
    _candidate(model_dir, "tiny_c", prefer=8, val_acc=0.999)
    publish(
        redis_url,
        completed("r1", "tiny_a", version=V2, val_acc=0.95),
        completed("r2", "tiny_b", version=V2, val_acc=0.999),
        completed("r3", "tiny_c", version=V2, val_acc=0.999),
    )
    # Events are handled in order: once tiny_c moved, tiny_a's and tiny_b's were decided.
    wait_for(lambda: _served(client, "tiny_c") == V2, what="tiny_c v2 to be served")
    assert (_served(client, "tiny_a"), _served(client, "tiny_b")) == (V1, V1)
    roles = {m.model_id: [(v.version, v.role) for v in m.versions] for m in _active(client).models}
    assert roles["tiny_a"] == [(V1, "current"), (V2, "candidate")]
    assert roles["tiny_b"] == [(V1, "current"), (V2, "candidate")]
    assert post_read(client, png_bytes(seven())).status_code == 200


def test_no_read_fails_during_a_swap(serve: Serve, model_dir: Path, redis_url: str) -> None:
    write_artifact(model_dir, "tiny_a", seed=1, prefer=3, version=V1)
    client = _start(serve, model_dir, redis_url, ["tiny_a"])
    _candidate(model_dir, "tiny_a", prefer=8, val_acc=0.995)
    image = png_bytes(seven())
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            answers.append(post_read(client, image))

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 8, what="reads before the swap")
        publish(redis_url, completed("r1", "tiny_a", version=V2, val_acc=0.995))
        wait_for(lambda: _served(client, "tiny_a") == V2, what="v2 to be served")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 8, what="reads after the swap")
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=10)
    assert [a.status_code for a in answers if a.status_code != 200] == []
    digits = {a.json()["digit"] for a in answers}
    assert digits == {3, 8}
