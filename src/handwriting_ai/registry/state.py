"""What the registry remembers, and the interface of the two places that can hold it.

Per model id a `ModelState`: the version served (`current`), a pin (new versions stay
candidates while it is set), the versions served before (newest last, what `rollback` returns
to) and the promotion gate's record. Beside them, the served set: which model ids make up the
ensemble, in order.

Two stores hold it: `DirState` (files in the model directory, for one replica or replicas that
share a volume) and `RedisState` (Redis is the shared state; each replica's model directory is a
cache of the artifacts). Every method blocks (disk or a sync Redis client): callers run them on
the admin threads, never on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from attrs import Factory, evolve, frozen

from handwriting_ai.contracts.converter import converter, structure
from handwriting_ai.contracts.events import ModelChanged
from handwriting_ai.inference.manifest import SAFE_ID
from handwriting_ai.inference.promotion import GateRecord
from handwriting_ai.inference.store import (
    CURRENT_FILE,
    GATE_FILE,
    MANIFEST_FILE,
    check_id,
    file_lock,
    list_versions,
    model_lock,
    read_pointer,
    set_current,
    version_dir,
    write_atomic,
)
from handwriting_ai.logging import get_logger

log = get_logger(__name__)
HISTORY_LIMIT = 20  # rollbacks reach this far back
SERVED_LOCK = "_served"  # the served set's lock name: not a model id (ids start alphanumeric)
SERVED_FILE = "SERVED.json"
SERVED_LOCK_FILE = ".served.lock"
PIN_FILE = "REGISTRY.json"  # the pin and the history, beside CURRENT and GATE.json


@frozen
class ModelState:
    current: str | None = None
    pinned: str | None = None
    history: tuple[str, ...] = ()  # earlier current versions, newest last
    gate: GateRecord = Factory(GateRecord)

    def moved_to(self, version: str) -> ModelState:
        """`current` becomes `version`; the old one is remembered for a rollback."""
        if version == self.current:
            return self
        history = self.history
        if self.current is not None:
            history = (*[v for v in history if v != self.current], self.current)[-HISTORY_LIMIT:]
        return evolve(self, current=version, history=history)


class RegistryState(Protocol):
    """Where the served set and each model's state live (files, or Redis)."""

    @property
    def shared(self) -> bool:
        """True when replicas with separate model directories see the same state (Redis)."""

    def lock(self, name: str, *, timeout_s: float) -> AbstractContextManager[None]:
        """Mutual exclusion between every replica, per model id (or `SERVED_LOCK`)."""

    def served(self) -> tuple[str, ...] | None:
        """The served model ids in order; None when never set (the settings then decide)."""

    def set_served(self, model_ids: tuple[str, ...]) -> None: ...

    def model(self, model_id: str) -> ModelState: ...

    def put_model(self, model_id: str, state: ModelState) -> None: ...

    def model_ids(self) -> list[str]:
        """Every model id with at least one stored version."""

    def manifests(self, model_id: str) -> dict[str, dict[str, object]]:
        """Every stored version's manifest (as JSON), by version."""

    def sync(self, model_id: str) -> list[str]:
        """Make the local model directory hold every stored version; the versions fetched."""

    def share_local(self, skip: tuple[str, ...]) -> None:
        """Publish versions that only the local directory holds, of model ids not in `skip`
        (those are synced by `sync`), so that every stored model is listed by every replica."""

    def publish(self, change: ModelChanged) -> None:
        """Tell every replica and follower about a change (an event on `digits:events`)."""


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.error("registry_file_unreadable", path=str(path), reason=str(exc))
        return None


def read_manifest_json(path: Path) -> dict[str, object] | None:
    try:
        data: object = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


@frozen
class DirState:
    """The registry in the model directory: `CURRENT`, `GATE.json` and `REGISTRY.json` per
    model id, `SERVED.json` at the top; `flock` for the locks. Events go nowhere (no Redis)."""

    model_dir: Path

    @property
    def shared(self) -> bool:
        return False

    def lock(self, name: str, *, timeout_s: float) -> AbstractContextManager[None]:
        if name == SERVED_LOCK:
            return _dir_lock(self.model_dir, timeout_s)
        return model_lock(self.model_dir, name, timeout_s=timeout_s)

    def served(self) -> tuple[str, ...] | None:
        data = _load_json(self.model_dir / SERVED_FILE)
        if isinstance(data, list) and data and all(isinstance(i, str) for i in data):
            return tuple(check_id(i, "model_id") for i in data)
        return None

    def set_served(self, model_ids: tuple[str, ...]) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.model_dir / SERVED_FILE, json.dumps(list(model_ids)) + "\n")

    def model(self, model_id: str) -> ModelState:
        root = self.model_dir / check_id(model_id, "model_id")
        gate = _load_json(root / GATE_FILE)
        extra = _load_json(root / PIN_FILE)
        extra = extra if isinstance(extra, dict) else {}
        pinned, history = extra.get("pinned"), extra.get("history")
        return ModelState(
            current=read_pointer(self.model_dir, model_id),
            pinned=pinned if isinstance(pinned, str) and SAFE_ID.match(pinned) else None,
            history=tuple(v for v in history if isinstance(v, str) and SAFE_ID.match(v))
            if isinstance(history, list)
            else (),
            gate=gate_record(gate, model_id),
        )

    def put_model(self, model_id: str, state: ModelState) -> None:
        before = self.model(model_id)
        root = self.model_dir / check_id(model_id, "model_id")
        root.mkdir(parents=True, exist_ok=True)
        # CURRENT before the record: a crash in between leaves the version served, never a
        # "promoted" decision that no CURRENT names.
        if state.current is not None and state.current != before.current:
            set_current(self.model_dir, model_id, state.current)
        if state.gate != before.gate:
            text = json.dumps(converter.unstructure(state.gate), indent=2, sort_keys=True)
            write_atomic(root / GATE_FILE, text + "\n")
        if (state.pinned, state.history) != (before.pinned, before.history):
            extra = {"pinned": state.pinned, "history": list(state.history)}
            write_atomic(root / PIN_FILE, json.dumps(extra, indent=2) + "\n")

    def model_ids(self) -> list[str]:
        if not self.model_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.model_dir.iterdir()
            if p.is_dir() and SAFE_ID.match(p.name) and list_versions(self.model_dir, p.name)
        )

    def manifests(self, model_id: str) -> dict[str, dict[str, object]]:
        out = {}
        for version in list_versions(self.model_dir, model_id):
            path = version_dir(self.model_dir, model_id, version) / MANIFEST_FILE
            data = read_manifest_json(path)
            if data is not None:
                out[version] = data
        return out

    def sync(self, model_id: str) -> list[str]:
        return []

    def share_local(self, skip: tuple[str, ...]) -> None:
        return None

    def publish(self, change: ModelChanged) -> None:
        return None


def gate_record(data: object, model_id: str) -> GateRecord:
    if data is None:
        return GateRecord()
    try:
        return structure(data, GateRecord)
    except ValueError as exc:  # ContractError is a ValueError
        log.error("gate_record_unreadable", model_id=model_id, reason=str(exc))
        return GateRecord()


@contextmanager
def _dir_lock(model_dir: Path, timeout_s: float) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(model_dir / SERVED_LOCK_FILE, timeout_s=timeout_s):
        yield


__all__ = ["CURRENT_FILE", "DirState", "ModelState", "RegistryState"]
