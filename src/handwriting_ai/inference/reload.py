"""Swap a model version in: the served ensemble with one member replaced, and what happened.

Readers keep the ensemble they took, so in-flight reads finish on the old one while new reads get
the new. Which version to serve is decided by `reconcile.py` (the only caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from attrs import frozen

from handwriting_ai.inference.engine import EngineHolder, Ensemble, Member, load_member
from handwriting_ai.inference.manifest import ManifestError
from handwriting_ai.inference.onnx_backend import Backend
from handwriting_ai.inference.store import version_dir

# promoted: passed the gate, now CURRENT and served; held: refused by the gate (a candidate);
# refused: cannot be served (bad manifest or weights); followed: served because CURRENT names
# it (another replica or an operator moved it); failed: could not be loaded now, tried again.
Action = Literal["promoted", "held", "refused", "followed", "failed"]


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


def served_member(ensemble: Ensemble | None, model_id: str) -> Member | None:
    for member in ensemble.members if ensemble else ():
        if member.manifest.model_id == model_id:
            return member
    return None


def load_version(
    model_dir: Path,
    model_id: str,
    version: str,
    *,
    expected_hash: str,
    backend: Backend = "torch",
) -> Member:
    """Blocking (disk and torch). Raises `ManifestError`/`ModelLoadError`/`OSError`."""
    member = load_member(
        version_dir(model_dir, model_id, version), expected_hash=expected_hash, backend=backend
    )
    if member.manifest.model_id != model_id:
        raise ManifestError(f"manifest names model {member.manifest.model_id!r}")
    return member


def swap_in(
    engine: EngineHolder,
    member: Member,
    order: Sequence[str],
    temperature_override: float | None,
) -> None:
    engine.swap(with_member(engine.ensemble, member, order, temperature_override))
