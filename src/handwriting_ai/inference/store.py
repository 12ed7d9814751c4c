"""Model directory layout: `<model_dir>/<model_id>/<version>/{model.pt,manifest.json,metrics.json}`.

`<model_id>/CURRENT` names the version being served; it is replaced atomically (write, then
rename), so a reader never sees half a pointer. Beside it, `GATE.json` is the promotion gate's
memory (see `promotion.py`) and `.gate.lock` serialises promotions between API replicas.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handwriting_ai.inference.manifest import SAFE_ID

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
CURRENT_FILE = "CURRENT"
GATE_FILE = "GATE.json"
LOCK_FILE = ".gate.lock"


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


def read_pointer(model_dir: Path, model_id: str) -> str | None:
    """What `CURRENT` names; None when there is no pointer (unlike `current_version`)."""
    pointer = model_dir / check_id(model_id, "model_id") / CURRENT_FILE
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return check_id(name, "version") if name else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def set_current(model_dir: Path, model_id: str, version: str) -> None:
    root = model_dir / check_id(model_id, "model_id")
    check_id(version, "version")
    write_atomic(root / CURRENT_FILE, version + "\n")


@contextmanager
def model_lock(model_dir: Path, model_id: str, *, timeout_s: float) -> Iterator[None]:
    """An exclusive lock on one model id, shared by every process on this model directory."""
    with file_lock(model_dir / check_id(model_id, "model_id") / LOCK_FILE, timeout_s=timeout_s):
        yield


@contextmanager
def file_lock(path: Path, *, timeout_s: float) -> Iterator[None]:
    """`flock` on `path`: the kernel drops it when its holder dies, so a killed replica never
    leaves it taken. Raises `TimeoutError` when held elsewhere for `timeout_s`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} held elsewhere for {timeout_s:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


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
