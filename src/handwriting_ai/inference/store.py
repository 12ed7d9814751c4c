"""Model directory layout: `<model_dir>/<model_id>/<version>/{model.pt,manifest.json,metrics.json}`.

`<model_id>/CURRENT` names the version being served; it is replaced atomically (write, then
rename), so a reader never sees half a pointer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from handwriting_ai.inference.manifest import SAFE_ID

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
CURRENT_FILE = "CURRENT"


def check_id(value: str, what: str) -> str:
    """Ids become path parts: refuse anything that could climb out of the model directory."""
    if not SAFE_ID.match(value) or value in {".", ".."}:
        raise ValueError(f"{what} {value!r} must match {SAFE_ID.pattern}")
    return value


def version_dir(model_dir: Path, model_id: str, version: str) -> Path:
    return model_dir / check_id(model_id, "model_id") / check_id(version, "version")


def list_versions(model_dir: Path, model_id: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first: version names sort by time."""
    root = model_dir / check_id(model_id, "model_id")
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file() and SAFE_ID.match(p.name)
    )


def current_version(model_dir: Path, model_id: str) -> str | None:
    pointer = model_dir / check_id(model_id, "model_id") / CURRENT_FILE
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        versions = list_versions(model_dir, model_id)
        return versions[-1] if versions else None
    return check_id(name, "version") if name else None


def set_current(model_dir: Path, model_id: str, version: str) -> None:
    root = model_dir / check_id(model_id, "model_id")
    check_id(version, "version")
    tmp = root / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT_FILE)


def bundled_model_dir() -> Path | None:
    """The shipped ensemble: inside the wheel, or `models/` at the root of a source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "bundled_models", here.parents[3] / "models"):
        if candidate.is_dir():
            return candidate
    return None


def seed_models(model_dir: Path, model_ids: tuple[str, ...], source: Path | None) -> list[str]:
    """Copy shipped models the model directory lacks, so zero configuration serves them.

    The shipped copy stays read-only; uploads and new versions go to `model_dir` only.
    """
    if source is None or source.resolve() == model_dir.resolve():
        return []
    seeded = []
    for model_id in model_ids:
        if list_versions(model_dir, model_id) or not list_versions(source, model_id):
            continue
        target = model_dir / check_id(model_id, "model_id")
        tmp = model_dir / f".seed-{model_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source / model_id, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        seeded.append(model_id)
    return seeded
