"""Load one stored version, and what a reconcile pass did with it (`ReloadOutcome`).

Which version to serve is decided by `reconcile.py` (the only caller); readers keep the ensemble
they took, so in-flight reads finish on the old one while new reads get the new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from attrs import frozen

from handwriting_ai.inference.engine import Member, load_member
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
