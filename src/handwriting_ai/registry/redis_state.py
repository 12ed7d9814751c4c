"""The registry in Redis: the one state every API replica shares, artifacts included.

A replica's model directory becomes a cache: `sync` copies the versions Redis has and the
directory lacks (a replica that started late or missed events), and publishes the ones only the
directory has (the shipped models it seeded, versions stored before Redis held the registry).
The pointer files (`CURRENT` and the rest) are kept in step too, so that a replica that starts
while Redis is down serves what it served last.

Artifacts are Redis strings: one value may hold up to 512 MB (Redis' `proto-max-bulk-len`), and
`MAX_MODEL_BYTES` keeps uploads well under it; they live in Redis' memory, about 300 KB per
version of the shipped models, so plan `maxmemory` for the versions kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import numpy as np
from attrs import frozen
from redis import Redis
from redis.exceptions import LockError
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.converter import converter
from handwriting_ai.contracts.events import ModelChanged, encode_event
from handwriting_ai.contracts.feedback import Correction, fold_corrections
from handwriting_ai.inference.manifest import SAFE_ID
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_id,
    list_versions,
    version_dir,
)
from handwriting_ai.logging import get_logger
from handwriting_ai.registry.state import DirState, ModelState, gate_record
from handwriting_ai.streams.follow import entries_of
from handwriting_ai.streams.keys import (
    EVENTS_STREAM,
    FEEDBACK_STREAM,
    MODELS_SERVED_KEY,
    MODELS_SET,
    model_blob_key,
    model_metrics_key,
    model_state_key,
    model_versions_key,
    registry_lock_key,
)
from handwriting_ai.training.feedback import I64, U8

log = get_logger(__name__)
CHUNK = 500  # corrections per XRANGE
MAX_MODEL_BYTES = 256 * 1024 * 1024  # the upload limit; Redis' own is 512 MB a value
LOCK_TTL_S = 120.0  # a replica killed while holding a lock frees it after this


def connect_sync(url: str) -> Redis:
    """A blocking client for the admin threads: bytes replies (artifacts are binary)."""
    return Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=2.0)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None


def _json(raw: object, key: str) -> object:
    """A JSON value kept in Redis; None (logged) when absent or not JSON (edited by hand)."""
    text = _text(raw)
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        log.error("registry_value_unreadable", key=key, reason=str(exc)[:200])
        return None


@frozen
class RedisState:
    redis: Redis
    local: DirState
    events_maxlen: int = 10_000

    @property
    def shared(self) -> bool:
        return True

    @contextmanager
    def _locked(self, name: str, timeout_s: float) -> Iterator[None]:
        lock = self.redis.lock(
            registry_lock_key(name), timeout=LOCK_TTL_S, blocking_timeout=timeout_s
        )
        if not lock.acquire():
            raise TimeoutError(f"registry lock {name!r} held elsewhere for {timeout_s:g} s")
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:  # expired while held: another replica may hold it now
                log.warning("registry_lock_expired", name=name)

    def lock(self, name: str, *, timeout_s: float) -> AbstractContextManager[None]:
        return self._locked(name, timeout_s)

    def served(self) -> tuple[str, ...] | None:
        data = _json(self.redis.get(MODELS_SERVED_KEY), MODELS_SERVED_KEY)
        if isinstance(data, list) and data and all(isinstance(i, str) for i in data):
            return tuple(i for i in data if SAFE_ID.match(i)) or None
        return None

    def set_served(self, model_ids: tuple[str, ...]) -> None:
        self.redis.set(MODELS_SERVED_KEY, json.dumps(list(model_ids)))
        self.local.set_served(model_ids)

    def model(self, model_id: str) -> ModelState:
        raw = self.redis.hgetall(model_state_key(check_id(model_id, "model_id")))
        if not raw:
            # Nothing in Redis yet (a registry that lived in the directory before): the
            # directory's state is the start, so a hand rollback or the gate's floor carries on.
            return self.local.model(model_id)
        fields = {_text(k) or "": _text(v) or "" for k, v in raw.items()}
        key = model_state_key(model_id)
        history = _json(fields.get("history"), key)
        pinned = fields.get("pinned") or None
        return ModelState(
            current=fields.get("current") or None,
            pinned=pinned if pinned and SAFE_ID.match(pinned) else None,
            history=tuple(v for v in history if isinstance(v, str) and SAFE_ID.match(v))
            if isinstance(history, list)
            else (),
            gate=gate_record(_json(fields.get("gate"), key), model_id),
        )

    def put_model(self, model_id: str, state: ModelState) -> None:
        self.redis.hset(
            model_state_key(check_id(model_id, "model_id")),
            mapping={
                "current": state.current or "",
                "pinned": state.pinned or "",
                "history": json.dumps(list(state.history)),
                "gate": json.dumps(converter.unstructure(state.gate), sort_keys=True),
            },
        )
        self.local.put_model(model_id, state)  # the cache: served from if Redis is down at start

    def model_ids(self) -> list[str]:
        ids = {m for m in (_text(v) for v in self.redis.smembers(MODELS_SET)) if m}
        return sorted(i for i in ids if SAFE_ID.match(i))

    def manifests(self, model_id: str) -> dict[str, dict[str, object]]:
        raw = self.redis.hgetall(model_versions_key(check_id(model_id, "model_id")))
        out: dict[str, dict[str, object]] = {}
        for version, manifest in raw.items():
            try:
                data: object = json.loads(manifest)
            except (ValueError, RecursionError):
                continue
            if isinstance(data, dict):
                out[_text(version) or ""] = data
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ artifacts

    def put_artifact(
        self, model_id: str, version: str, model: bytes, manifest_raw: bytes, metrics_raw: bytes
    ) -> bool:
        """Store a version for every replica; False when it was there already."""
        if len(model) > MAX_MODEL_BYTES:
            raise ValueError(
                f"model.pt is {len(model)} bytes; the registry keeps {MAX_MODEL_BYTES}"
            )
        versions = model_versions_key(check_id(model_id, "model_id"))
        if self.redis.hexists(versions, check_id(version, "version")):
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            # The blob before the manifest, in one transaction: a version in the index always
            # has its weights.
            pipe.set(model_blob_key(model_id, version), model)
            pipe.hset(model_metrics_key(model_id), version, metrics_raw)
            pipe.hset(versions, version, manifest_raw)
            pipe.sadd(MODELS_SET, model_id)
            pipe.execute()
        log.info("model_published", model_id=model_id, version=version, model_bytes=len(model))
        return True

    def sync(self, model_id: str) -> list[str]:
        model_dir = self.local.model_dir
        stored = {_text(v) or "" for v in self.redis.hkeys(model_versions_key(model_id))}
        local = set(list_versions(model_dir, model_id))
        for version in sorted(local - stored):
            self._publish_local(model_id, version)
        fetched = []
        for version in sorted(stored - local):
            if SAFE_ID.match(version) and self._fetch(model_id, version):
                fetched.append(version)
        return fetched

    def share_local(self, skip: tuple[str, ...]) -> None:
        for model_id in self.local.model_ids():
            if model_id in skip:
                continue
            stored = {_text(v) or "" for v in self.redis.hkeys(model_versions_key(model_id))}
            for version in list_versions(self.local.model_dir, model_id):
                if version not in stored:
                    self._publish_local(model_id, version)
            if not self.redis.exists(model_state_key(model_id)):
                self.put_model(model_id, self.local.model(model_id))

    def _publish_local(self, model_id: str, version: str) -> None:
        folder = version_dir(self.local.model_dir, model_id, version)
        try:
            model = (folder / MODEL_FILE).read_bytes()
            manifest = (folder / MANIFEST_FILE).read_bytes()
            metrics_path = folder / METRICS_FILE
            metrics = metrics_path.read_bytes() if metrics_path.is_file() else b"{}"
        except OSError as exc:
            log.warning("model_publish_failed", model_id=model_id, version=version, reason=str(exc))
            return
        self.put_artifact(model_id, version, model, manifest, metrics)

    def _fetch(self, model_id: str, version: str) -> bool:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(model_blob_key(model_id, version))
            pipe.hget(model_versions_key(model_id), version)
            pipe.hget(model_metrics_key(model_id), version)
            model, manifest, metrics = pipe.execute()
        if not isinstance(model, bytes) or not isinstance(manifest, bytes):
            log.error("model_blob_missing", model_id=model_id, version=version)
            return False
        final = version_dir(self.local.model_dir, model_id, version)
        tmp = final.parent / f".fetch-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            (tmp / MODEL_FILE).write_bytes(model)
            (tmp / METRICS_FILE).write_bytes(metrics if isinstance(metrics, bytes) else b"{}")
            (tmp / MANIFEST_FILE).write_bytes(manifest)  # last: a version is whole once it has one
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info(
            "model_fetched",
            model_id=model_id,
            version=version,
            model_bytes=len(model),
            sha256=hashlib.sha256(model).hexdigest()[:16],
        )
        return True

    def corrections(self, request_ids: Sequence[str]) -> tuple[U8, I64] | None:
        """The corrections of these reads on `digits:feedback` (the newest of each), for the
        promotion gate; reads that were trimmed away are simply absent."""
        wanted = set(request_ids)
        latest: dict[str, Correction] = {}
        start = "-"
        while True:
            rows = entries_of(self.redis.xrange(FEEDBACK_STREAM, start, "+", count=CHUNK))
            # Malformed entries are skipped silently: the worker that trained on them logged them.
            fold_corrections(latest, rows, wanted=wanted)
            if len(rows) < CHUNK:
                break
            start = f"({rows[-1][0]}"
        if not latest:
            return None
        pixels = np.stack([c.pixels() for c in latest.values()])
        return pixels, np.array([c.label for c in latest.values()], dtype=np.int64)

    def publish(self, change: ModelChanged) -> None:
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_event(change).items()}
        self.redis.xadd(EVENTS_STREAM, fields, maxlen=self.events_maxlen, approximate=True)
