"""API replicas with separate model directories converge through Redis: the registry (served set,
current versions, pins, gate records) and the artifacts themselves live there.

Each replica is a real app (`create_app`, lifespan included) on its own `DIGITS__MODEL_DIR` and
one real redis-server. Versions arrive the way a worker hands them in (`POST
/v1/admin/models/upload` to one replica) and change the way an operator changes them (the admin
routes, on any replica); what each replica serves is read from `/v1/models/active`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from redis import Redis

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ActiveModels
from handwriting_ai.contracts.converter import structure
from handwriting_ai.contracts.events import ModelChanged, decode_event
from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE, version_dir
from handwriting_ai.models import create_model
from helpers import (
    Artifact,
    Client,
    json_of,
    make_settings,
    png_bytes,
    post_read,
    seven,
    state_of,
    write_artifact,
)
from redis_server import RedisServer
from stream_helpers import completed, publish
from test_metrics import scrape, value

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

MODEL, OTHER = "tiny_a", "big_b"
V1, V2, V3 = (f"2025010{d}T000000Z" for d in range(1, 4))
KEY = "admin-key"
CONVERGE_S = 30.0


@contextmanager
def replica(model_dir: Path, redis_url: str, extra: Mapping[str, str] = {}) -> Iterator[Client]:
    env = {
        "REDIS_URL": redis_url,
        "SECURITY__ADMIN_KEY": KEY,
        # Long: these tests see events, not the periodic pass, move replicas (but a replica
        # still reconciles at start).
        "DIGITS__RECONCILE_INTERVAL_S": "600",
        **extra,
    }
    with TestClient(create_app(make_settings(model_dir, [MODEL], env))) as client:
        yield client


def _artifact(
    where: Path, version: str, *, prefer: int, val_acc: float, model_id: str = MODEL
) -> Artifact:
    return write_artifact(
        where, model_id, seed=5, prefer=prefer, version=version, edit=_val_acc(val_acc)
    )


def _val_acc(value: float) -> Callable[[dict[str, object]], None]:
    return lambda manifest: manifest.update(val_acc=value)


def upload(client: Client, art: Artifact) -> httpx.Response:
    files = {
        name: (name, (art.directory / name).read_bytes(), "application/octet-stream")
        for name in (MODEL_FILE, MANIFEST_FILE, METRICS_FILE)
    }
    parts = {"model": files[MODEL_FILE], "manifest": files[MANIFEST_FILE]}
    parts["metrics"] = files[METRICS_FILE]
    return client.post(
        "/v1/admin/models/upload",
        files=parts,
        data={"model_id": art.model_id},
        headers={"X-Api-Key": KEY},
    )


def admin(client: Client, path: str) -> dict[str, object]:
    response = client.post(f"/v1/admin/models/{path}", headers={"X-Api-Key": KEY})
    body = json_of(response)
    assert response.status_code == 200, body
    assert isinstance(body, dict)
    return body


def served(client: Client) -> dict[str, str]:
    active = structure(json_of(client.get("/v1/models/active")), ActiveModels)
    return {m.model_id: m.version for m in active.members}


def listing(client: Client) -> dict[str, dict[str, object]]:
    body = json_of(client.get("/v1/models"))
    assert isinstance(body, dict)
    assert isinstance(body["models"], list)
    return {str(m["model_id"]): m for m in body["models"]}


def digit(client: Client) -> int:
    body = json_of(post_read(client, png_bytes(seven())))
    assert isinstance(body, dict), body
    value = body["digit"]
    assert isinstance(value, int)
    return value


def until(check: Callable[[], bool], what: str) -> None:
    stream_helpers.wait_for(check, timeout_s=CONVERGE_S, what=what)


def model_events(url: str) -> list[ModelChanged]:
    with Redis.from_url(url, decode_responses=True) as r:
        entries = r.xrange("digits:events")
    out = []
    for _, fields in entries:
        if fields.get("type") == "digits.model.changed.v1":
            event = decode_event(fields)
            assert isinstance(event, ModelChanged)
            out.append(event)
    return out


def test_an_uploaded_version_reaches_a_replica_without_the_volume_and_operators_move_both(
    tmp_path: Path, redis_url: str
) -> None:
    dir_a, dir_b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "worker"
    _artifact(dir_a, V1, prefer=3, val_acc=0.99)
    with replica(dir_a, redis_url) as a, replica(dir_b, redis_url) as b:
        # B's directory was empty: it fetched v1 from Redis before serving.
        assert served(a) == served(b) == {MODEL: V1}
        assert (version_dir(dir_b, MODEL, V1) / MODEL_FILE).is_file()

        # A worker hands v2 to A only; its completed event moves both.
        assert upload(a, _artifact(elsewhere, V2, prefer=8, val_acc=0.995)).status_code == 201
        publish(redis_url, completed("job-2", MODEL, version=V2, val_acc=0.995))
        until(lambda: served(a) == served(b) == {MODEL: V2}, "both replicas to serve v2")
        assert digit(b) == 8
        assert (version_dir(dir_b, MODEL, V2) / MODEL_FILE).is_file()

        # Roll back through B: both go back to v1, and v2 is not promoted again by itself.
        body = admin(b, f"{MODEL}/rollback")
        assert (body["current"], body["changed"]) == (V1, True)
        until(lambda: served(a) == served(b) == {MODEL: V1}, "both to follow the rollback")
        assert digit(a) == 3
        entry = listing(a)[MODEL]
        assert (entry["current"], entry["loaded_version"]) == (V1, V1)

        # Promote v2 through A, then pin it: a better v3 stays a candidate until unpinned.
        admin(a, f"{MODEL}/versions/{V2}/promote")
        until(lambda: served(a) == served(b) == {MODEL: V2}, "both to serve the promoted v2")
        admin(a, f"{MODEL}/pin")
        assert upload(a, _artifact(elsewhere, V3, prefer=5, val_acc=0.999)).status_code == 201
        publish(redis_url, completed("job-3", MODEL, version=V3, val_acc=0.999))
        until(lambda: V3 in {v["version"] for v in _versions(b)}, "v3 to be listed")
        assert served(a) == served(b) == {MODEL: V2}
        v3 = next(v for v in _versions(b) if v["version"] == V3)
        assert (v3["status"], v3["decision"]) == ("candidate", None)
        assert str(v3["reason"]).startswith(f"pinned at {V2}")
        admin(b, f"{MODEL}/unpin")
        until(lambda: served(a) == served(b) == {MODEL: V3}, "v3 to be promoted once unpinned")
        assert digit(a) == digit(b) == 5

        # Promotions are counted where they are made: the gate's on whichever replica judged,
        # the operators' on the replica that took the request (B's rollback, A's promote).
        samples = [scrape(a), scrape(b)]
        by_gate = [value(s, "digits_model_promotions_total", by="gate") for s in samples]
        by_operator = [value(s, "digits_model_promotions_total", by="operator") for s in samples]
        assert (sum(by_gate), by_operator) == (2, [1, 1])
        loaded = [value(s, "digits_model_reloads_total", outcome="loaded") for s in samples]
        assert loaded[1] >= 5  # B: v1 at start, then v2, v1, v2, v3

    # Every change is an event, the operator's and the gate's, with the job that made it.
    seen = [(e.action, e.by, e.version) for e in model_events(redis_url)]
    assert seen == [
        ("promoted", "gate", V2),
        ("rolled_back", "operator", V1),
        ("promoted", "operator", V2),
        ("pinned", "operator", V2),
        ("unpinned", "operator", V2),
        ("promoted", "gate", V3),
    ]
    gate_v3 = model_events(redis_url)[-1]
    assert (gate_v3.request_id, gate_v3.old_version, gate_v3.served) == ("", V2, [MODEL])


def _versions(client: Client) -> list[dict[str, object]]:
    versions = listing(client)[MODEL]["versions"]
    assert isinstance(versions, list)
    return versions


def test_a_held_version_is_listed_with_the_reason(tmp_path: Path, redis_url: str) -> None:
    _artifact(tmp_path / "a", V1, prefer=3, val_acc=0.99)
    with replica(tmp_path / "a", redis_url) as a:
        assert upload(a, _artifact(tmp_path / "w", V2, prefer=8, val_acc=0.90)).status_code == 201
        publish(redis_url, completed("job-2", MODEL, version=V2, val_acc=0.90))
        until(lambda: any(v["decision"] == "held" for v in _versions(a)), "v2 to be judged")
        v2 = next(v for v in _versions(a) if v["version"] == V2)
        assert v2["status"] == "candidate"
        assert "below the served version's 0.9900" in str(v2["reason"])
        assert served(a) == {MODEL: V1}
        # The operator overrides the gate; a version that does not exist is a 404.
        admin(a, f"{MODEL}/versions/{V2}/promote")
        until(lambda: served(a) == {MODEL: V2}, "the operator's promotion")
        missing = a.post(
            f"/v1/admin/models/{MODEL}/versions/20990101T000000Z/promote",
            headers={"X-Api-Key": KEY},
        )
        assert missing.status_code == 404
        assert a.post(f"/v1/admin/models/{MODEL}/rollback").status_code == 401


@pytest.mark.slow
def test_the_served_set_survives_restarts_and_a_late_replica_fetches_a_44_mb_model(
    tmp_path: Path, redis_url: str
) -> None:
    dir_a, dir_c = tmp_path / "a", tmp_path / "c"
    _artifact(dir_a, V1, prefer=3, val_acc=0.99)
    big = write_artifact(
        tmp_path / "worker",
        OTHER,
        version=V1,
        arch="resnet18",
        state=state_of(create_model("resnet18")),
    )
    size = (big.directory / MODEL_FILE).stat().st_size
    assert size > 40 * 1024 * 1024
    with replica(dir_a, redis_url) as a:
        assert upload(a, big).status_code == 201
        assert served(a) == {MODEL: V1}  # stored, not served: not in DIGITS__ACTIVE_MODEL
        assert admin(a, f"{OTHER}/serve")["served"] == [MODEL, OTHER]
        until(lambda: served(a) == {MODEL: V1, OTHER: V1}, "A to serve both")
    # Restarted, A serves what Redis says, not its settings (DIGITS__ACTIVE_MODEL=tiny_a).
    with replica(dir_a, redis_url) as a:
        assert served(a) == {MODEL: V1, OTHER: V1}
        # A replica that starts late, on an empty directory, fetches both before serving.
        with replica(dir_c, redis_url) as c:
            assert served(c) == {MODEL: V1, OTHER: V1}
            fetched = (version_dir(dir_c, OTHER, V1) / MODEL_FILE).read_bytes()
            original = (big.directory / MODEL_FILE).read_bytes()
            assert hashlib.sha256(fetched).digest() == hashlib.sha256(original).digest()
            admin(c, f"{MODEL}/unserve")
            until(lambda: served(a) == served(c) == {OTHER: V1}, "both to drop tiny_a")
            last = c.post(f"/v1/admin/models/{OTHER}/unserve", headers={"X-Api-Key": KEY})
            assert last.status_code == 409
    actions = [(e.action, e.model_id) for e in model_events(redis_url)]
    assert actions == [("served", OTHER), ("unserved", MODEL)]


def test_a_replica_started_while_redis_is_down_serves_what_it_served_last(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    dir_a = tmp_path / "a"
    _artifact(dir_a, V1, prefer=3, val_acc=0.99)
    with replica(dir_a, redis_url) as a:
        assert upload(a, _artifact(tmp_path / "w", V2, prefer=8, val_acc=0.995)).status_code == 201
        publish(redis_url, completed("job-2", MODEL, version=V2, val_acc=0.995))
        until(lambda: served(a) == {MODEL: V2}, "v2")
        admin(a, f"{MODEL}/rollback")
        until(lambda: served(a) == {MODEL: V1}, "the rollback")
    redis_server.stop()
    try:
        with replica(dir_a, redis_url) as a:
            assert served(a) == {MODEL: V1}  # the rollback, from the directory's copy
            assert digit(a) == 3
            assert a.get("/v1/models").status_code == 503
    finally:
        redis_server.start()


def test_registry_values_edited_into_garbage_are_logged_and_survived(
    tmp_path: Path, redis_url: str
) -> None:
    _artifact(tmp_path / "a", V1, prefer=3, val_acc=0.99)
    with Redis.from_url(redis_url) as r:
        r.set("digits:models:served", b"[not json")
        r.hset(f"digits:model:{MODEL}", mapping={"current": V1, "history": "[", "gate": "{"})
    with replica(tmp_path / "a", redis_url) as a:
        assert served(a) == {MODEL: V1}  # the settings' served set, the registry's current
        entry = listing(a)[MODEL]
        assert (entry["current"], entry["previous"]) == (V1, None)
        assert admin(a, f"{MODEL}/pin")["pinned"] == V1
