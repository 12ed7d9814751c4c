"""Take a newly trained version: load it, pass it through the promotion gate, swap it in.

Blocking (disk and torch): the reload consumer runs `apply_completed` in the executor. Readers
keep the ensemble they took, so in-flight reads finish on the old one while new reads get the new.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from attrs import frozen

from handwriting_ai.inference.engine import (
    EngineHolder,
    Ensemble,
    Member,
    ModelLoadError,
    load_member,
)
from handwriting_ai.inference.manifest import ManifestError
from handwriting_ai.inference.promotion import should_promote
from handwriting_ai.inference.store import set_current, version_dir
from handwriting_ai.logging import get_logger

log = get_logger(__name__)
Action = Literal["promoted", "candidate", "failed", "ignored"]


@frozen
class ReloadOutcome:
    action: Action
    model_id: str
    version: str
    old_version: str | None = None
    val_acc: float | None = None
    old_val_acc: float | None = None
    reason: str = ""


def with_member(
    ensemble: Ensemble | None,
    member: Member,
    order: Sequence[str],
    temperature_override: float | None,
) -> Ensemble:
    """The ensemble with `member` in place of its model's old member (or added), in `order`."""
    by_id = {m.manifest.model_id: m for m in (ensemble.members if ensemble else ())}
    by_id[member.manifest.model_id] = member
    members = tuple(by_id[m] for m in order if m in by_id)
    override = ensemble.temperature_override if ensemble is not None else temperature_override
    return Ensemble(members=members, temperature_override=override)


def _served(ensemble: Ensemble | None, model_id: str) -> Member | None:
    for member in ensemble.members if ensemble else ():
        if member.manifest.model_id == model_id:
            return member
    return None


def apply_completed(
    engine: EngineHolder,
    *,
    model_dir: Path,
    active_models: Sequence[str],
    model_id: str,
    version: str,
    tolerance: float,
    expected_hash: str,
    temperature_override: float | None = None,
) -> ReloadOutcome:
    """Load `<model_dir>/<model_id>/<version>`; promote it (CURRENT + swap) if the gate allows."""
    old = engine.ensemble
    served = _served(old, model_id)
    old_version = served.manifest.version if served else None
    old_val_acc = served.manifest.val_acc if served else None
    if model_id not in active_models:
        return ReloadOutcome("ignored", model_id, version, reason="not an active model")
    if served is not None and served.path.name == version:
        return ReloadOutcome("ignored", model_id, version, old_version, reason="already served")
    try:
        member = load_member(version_dir(model_dir, model_id, version), expected_hash=expected_hash)
        if member.manifest.model_id != model_id:
            raise ManifestError(f"manifest names model {member.manifest.model_id!r}")
    except (ManifestError, ModelLoadError, ValueError, OSError) as exc:
        log.error(
            "model_reload_failed",
            model_id=model_id,
            version=version,
            served_version=old_version,
            reason=str(exc),
        )
        return ReloadOutcome("failed", model_id, version, old_version, None, old_val_acc, str(exc))
    new_val_acc = member.manifest.val_acc
    if not should_promote(new_val_acc, old_val_acc, tolerance):
        log.info(
            "model_candidate",
            model_id=model_id,
            version=version,
            val_acc=new_val_acc,
            served_version=old_version,
            served_val_acc=old_val_acc,
            tolerance=tolerance,
        )
        return ReloadOutcome("candidate", model_id, version, old_version, new_val_acc, old_val_acc)
    # CURRENT first: if the process dies between the two steps, a restart serves the new version.
    set_current(model_dir, model_id, version)
    engine.swap(with_member(engine.ensemble, member, active_models, temperature_override))
    log.info(
        "model_promoted",
        model_id=model_id,
        old_version=old_version,
        new_version=version,
        old_val_acc=old_val_acc,
        new_val_acc=new_val_acc,
    )
    return ReloadOutcome("promoted", model_id, version, old_version, new_val_acc, old_val_acc)
