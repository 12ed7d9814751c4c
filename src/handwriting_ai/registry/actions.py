"""What an operator can change at run time: the served set, and each model's current version.

Each action takes the registry lock it needs, checks, writes the new state and publishes a
`digits.model.changed.v1` event; every replica's reconciler then makes it so. Repeating an
action that is already in effect changes nothing and publishes nothing (`changed` is False), so
a retried request is safe. Blocking: run on the admin threads.
"""

from __future__ import annotations

import json
from typing import Literal

from attrs import evolve, frozen

from handwriting_ai.contracts.events import ModelAction, ModelChanged, now_iso
from handwriting_ai.errors import ConflictError, NotFoundError
from handwriting_ai.inference.manifest import ManifestError, parse_manifest
from handwriting_ai.inference.store import check_id
from handwriting_ai.logging import get_logger
from handwriting_ai.registry.state import SERVED_LOCK, ModelState, RegistryState

log = get_logger(__name__)
LOCK_TIMEOUT_S = 10.0


@frozen
class RegistryChange:
    """The answer to an admin action: what it did and where the model stands now."""

    action: ModelAction
    changed: bool
    model_id: str
    served: list[str]
    version: str | None = None
    current: str | None = None
    pinned: str | None = None
    previous: str | None = None


def _id(model_id: str) -> str:
    """An id that could never have been stored is simply not there (404, as any other)."""
    try:
        return check_id(model_id, "model_id")
    except ValueError:
        raise NotFoundError(f"No stored version of model {model_id!r}.") from None


def _served(state: RegistryState, default: tuple[str, ...]) -> tuple[str, ...]:
    return state.served() or default


def _stored(state: RegistryState, model_id: str) -> dict[str, dict[str, object]]:
    manifests = state.manifests(model_id)
    if not manifests:
        raise NotFoundError(f"No stored version of model {model_id!r}.")
    return manifests


def _servable(state: RegistryState, model_id: str, version: str, expected_hash: str) -> None:
    data = _stored(state, model_id).get(version)
    if data is None:
        raise NotFoundError(f"Model {model_id!r} has no stored version {version!r}.")
    try:
        parse_manifest(json.dumps(data), expected_hash=expected_hash)
    except ManifestError as exc:
        raise ConflictError(f"Version {version} of {model_id} cannot be served: {exc}") from None


def _answer(
    action: ModelAction,
    changed: bool,
    model_id: str,
    served: tuple[str, ...],
    model: ModelState,
    version: str | None = None,
) -> RegistryChange:
    return RegistryChange(
        action=action,
        changed=changed,
        model_id=model_id,
        served=list(served),
        version=version,
        current=model.current,
        pinned=model.pinned,
        previous=model.history[-1] if model.history else None,
    )


def _publish(
    state: RegistryState,
    change: RegistryChange,
    *,
    request_id: str,
    old_version: str | None = None,
    reason: str = "",
) -> None:
    event = ModelChanged(
        request_id=request_id,
        user_id=0,
        model_id=change.model_id,
        ts=now_iso(),
        action=change.action,
        by="operator",
        version=change.version,
        old_version=old_version,
        served=change.served,
        reason=reason,
    )
    state.publish(event)
    log.info(
        "model_registry_changed",
        action=change.action,
        model_id=change.model_id,
        version=change.version,
        old_version=old_version,
        served=change.served,
    )


def serve(
    state: RegistryState, default: tuple[str, ...], model_id: str, *, request_id: str
) -> RegistryChange:
    """Add a model id to the served ensemble (at its end)."""
    model_id = _id(model_id)
    _stored(state, model_id)
    with state.lock(SERVED_LOCK, timeout_s=LOCK_TIMEOUT_S):
        served = _served(state, default)
        changed = model_id not in served
        if changed:
            served = (*served, model_id)
            state.set_served(served)
    answer = _answer("served", changed, model_id, served, state.model(model_id))
    if changed:
        _publish(state, answer, request_id=request_id)
    return answer


def unserve(
    state: RegistryState, default: tuple[str, ...], model_id: str, *, request_id: str
) -> RegistryChange:
    """Take a model id out of the served ensemble; its versions stay stored."""
    model_id = _id(model_id)
    with state.lock(SERVED_LOCK, timeout_s=LOCK_TIMEOUT_S):
        served = _served(state, default)
        changed = model_id in served
        if changed:
            if served == (model_id,):
                raise ConflictError(
                    f"{model_id} is the only served model: serve another before removing it."
                )
            served = tuple(m for m in served if m != model_id)
            state.set_served(served)
    answer = _answer("unserved", changed, model_id, served, state.model(model_id))
    if changed:
        _publish(state, answer, request_id=request_id)
    return answer


Move = Literal["promoted", "rolled_back", "pinned", "unpinned"]


def promote(
    state: RegistryState,
    default: tuple[str, ...],
    model_id: str,
    version: str,
    *,
    expected_hash: str,
    request_id: str,
) -> RegistryChange:
    """Make a stored version current, whatever the gate said of it (an operator's decision)."""
    model_id = _id(model_id)
    _servable(state, model_id, version, expected_hash)
    with state.lock(model_id, timeout_s=LOCK_TIMEOUT_S):
        before = state.model(model_id)
        now = before.moved_to(version)
        gate = now.gate.decided(version, "promoted", "by an operator")
        if before.current is not None and before.current not in gate.decisions:
            gate = gate.decided(before.current, "promoted")  # left: not to come back by itself
        now = evolve(now, gate=gate)
        if now.pinned is not None:
            now = evolve(now, pinned=version)  # a pin stays on what the operator chose
        changed = now != before
        if changed:
            state.put_model(model_id, now)
    return _moved("promoted", state, default, model_id, version, before, now, request_id)


def rollback(
    state: RegistryState, default: tuple[str, ...], model_id: str, *, request_id: str
) -> RegistryChange:
    """Serve the version that was current before this one. The version left keeps its gate
    decision, so it is not promoted again by itself; a newer one is judged as usual."""
    model_id = _id(model_id)
    _stored(state, model_id)
    with state.lock(model_id, timeout_s=LOCK_TIMEOUT_S):
        before = state.model(model_id)
        stored = state.manifests(model_id)
        history = [v for v in before.history if v in stored and v != before.current]
        if not history:
            raise ConflictError(f"{model_id} has no earlier served version to roll back to.")
        target = history[-1]
        now = evolve(before, current=target, history=tuple(history[:-1]))
        if now.pinned is not None:
            now = evolve(now, pinned=target)
        state.put_model(model_id, now)
    return _moved("rolled_back", state, default, model_id, target, before, now, request_id)


def pin(
    state: RegistryState,
    default: tuple[str, ...],
    model_id: str,
    version: str | None,
    *,
    expected_hash: str,
    request_id: str,
) -> RegistryChange:
    """Keep `version` (default: the current one) served: new versions stay candidates."""
    model_id = _id(model_id)
    with state.lock(model_id, timeout_s=LOCK_TIMEOUT_S):
        before = state.model(model_id)
        target = version or before.current
        if target is None:
            raise NotFoundError(f"Model {model_id!r} has no current version to pin.")
        _servable(state, model_id, target, expected_hash)
        now = evolve(before.moved_to(target), pinned=target)
        changed = now != before
        if changed:
            state.put_model(model_id, now)
    return _moved("pinned", state, default, model_id, target, before, now, request_id, changed)


def unpin(
    state: RegistryState, default: tuple[str, ...], model_id: str, *, request_id: str
) -> RegistryChange:
    """New versions go through the gate again (those that arrived meanwhile are judged now)."""
    model_id = _id(model_id)
    _stored(state, model_id)
    with state.lock(model_id, timeout_s=LOCK_TIMEOUT_S):
        before = state.model(model_id)
        now = evolve(before, pinned=None)
        if now != before:
            state.put_model(model_id, now)
    return _moved(
        "unpinned", state, default, model_id, before.pinned, before, now, request_id, now != before
    )


def _moved(
    action: Move,
    state: RegistryState,
    default: tuple[str, ...],
    model_id: str,
    version: str | None,
    before: ModelState,
    now: ModelState,
    request_id: str,
    changed: bool | None = None,
) -> RegistryChange:
    changed = now != before if changed is None else changed
    answer = _answer(action, changed, model_id, _served(state, default), now, version)
    if changed:
        old = before.current if before.current != now.current else None
        _publish(state, answer, request_id=request_id, old_version=old)
    return answer
