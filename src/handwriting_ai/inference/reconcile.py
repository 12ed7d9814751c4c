"""Keep every API replica serving what the model directory says, and judge versions no event did.

Replicas share `DIGITS__MODEL_DIR`; the directory, not any one process's memory of events, is the
truth. Each replica runs `Reconciler.reconcile` at start (before serving), whenever a `completed`
event arrives, and every `DIGITS__RECONCILE_INTERVAL_S`. For each active model id:

1. Judge, under `<model_id>/.gate.lock` so that replicas take turns: every stored version newer
   than `CURRENT` that was never judged, oldest first, goes through the promotion gate against
   `CURRENT`'s val_acc and the best val_acc ever served. One that passes and loads becomes
   `CURRENT`. Each decision (promoted, held, refused) is kept in `<model_id>/GATE.json` with that
   best, so no version is judged twice, by this replica or another, across restarts. A version
   that could not be read for a passing reason (an OS error) gets no decision: the next pass
   judges it again.
2. Follow: when `CURRENT` names a version other than the one served (this pass, another replica
   or an operator moved it), load it and swap it in. A failed load is tried again on the next
   pass; one whose files are there but refused is not, until `CURRENT` names another version.

So a replica that was down for an event, or whose reload failed or timed out, converges on its
next pass. The floor lives in a file rather than being recomputed from manifests because
manifests do not say which versions were ever served, and a held or broken candidate's val_acc
must never raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from attrs import define, field

from handwriting_ai.contracts.converter import converter, structure
from handwriting_ai.inference.engine import EngineHolder, Member, ModelLoadError
from handwriting_ai.inference.manifest import Manifest, ManifestError, read_manifest
from handwriting_ai.inference.onnx_backend import Backend
from handwriting_ai.inference.promotion import Decision, GateRecord, should_promote
from handwriting_ai.inference.reload import (
    ReloadOutcome,
    load_version,
    served_member,
    swap_in,
)
from handwriting_ai.inference.store import (
    GATE_FILE,
    MANIFEST_FILE,
    check_id,
    list_versions,
    model_lock,
    read_pointer,
    set_current,
    version_dir,
    write_atomic,
)
from handwriting_ai.logging import get_logger

log = get_logger(__name__)
LOCK_TIMEOUT_S = 60.0
MIN_INTERVAL_S = 0.05
# Refusals that no retry can fix: the version's files are there and wrong.
_REFUSED = (ManifestError, ModelLoadError, ValueError)


def read_record(model_dir: Path, model_id: str) -> GateRecord:
    path = model_dir / check_id(model_id, "model_id") / GATE_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return GateRecord()
    try:
        return structure(json.loads(raw), GateRecord)
    except ValueError as exc:  # ContractError and JSONDecodeError are ValueErrors
        log.error("gate_record_unreadable", model_id=model_id, path=str(path), reason=str(exc))
        return GateRecord()


def write_record(model_dir: Path, model_id: str, record: GateRecord) -> None:
    text = json.dumps(converter.unstructure(record), indent=2, sort_keys=True) + "\n"
    write_atomic(model_dir / check_id(model_id, "model_id") / GATE_FILE, text)


@define
class _Judged:
    """What a judging pass leaves for the follow step."""

    current: str | None
    promoted: Member | None = None
    outcomes: list[ReloadOutcome] = field(factory=list)


@define
class Reconciler:
    """Blocking (disk and torch): run `reconcile` in a thread. One pass at a time per process."""

    engine: EngineHolder
    model_dir: Path
    active_models: tuple[str, ...]
    tolerance: float
    expected_hash: str
    temperature_override: float | None = None
    backend: Backend = "torch"
    lock_timeout_s: float = LOCK_TIMEOUT_S
    _busy: threading.Lock = field(factory=threading.Lock)
    # (model_id, version) of CURRENT versions that failed to load -> the failure is permanent.
    _failing: dict[tuple[str, str], bool] = field(factory=dict)
    # model_id -> why judging failed last pass (logged when it changes, not every pass).
    _cannot_judge: dict[str, str] = field(factory=dict)

    def refused_at_start(self, model_id: str, version: str) -> None:
        """The start-up load already refused (and logged) this CURRENT version: following it
        again would only repeat that, until `CURRENT` names another version."""
        self._failing[(model_id, version)] = True

    def reconcile(self) -> list[ReloadOutcome]:
        """One pass over the active models; skipped (empty) while a previous pass still runs."""
        if not self._busy.acquire(blocking=False):
            return []
        outcomes: list[ReloadOutcome] = []
        try:
            for model_id in self.active_models:
                try:
                    outcomes.extend(self._reconcile(model_id))
                except (OSError, ValueError, RuntimeError) as exc:  # e.g. CURRENT names no id
                    log.error("reconcile_failed", model_id=model_id, reason=str(exc))
        finally:
            self._busy.release()
        return outcomes

    def _reconcile(self, model_id: str) -> list[ReloadOutcome]:
        if not (self.model_dir / check_id(model_id, "model_id")).is_dir():
            return []
        served = served_member(self.engine.ensemble, model_id)
        try:
            with model_lock(self.model_dir, model_id, timeout_s=self.lock_timeout_s):
                judged = self._judge(model_id, served)
        except OSError as exc:  # TimeoutError included; a read-only model dir only follows
            if self._cannot_judge.get(model_id) != str(exc):
                log.warning("reconcile_judge_failed", model_id=model_id, reason=str(exc))
            self._cannot_judge[model_id] = str(exc)
            judged = _Judged(read_pointer(self.model_dir, model_id))
        else:
            self._cannot_judge.pop(model_id, None)
        if judged.promoted is not None:
            swap_in(self.engine, judged.promoted, self.active_models, self.temperature_override)
        elif judged.current is not None and (served is None or served.path.name != judged.current):
            judged.outcomes.extend(self._follow(model_id, judged.current, served))
        return judged.outcomes

    # ------------------------------------------------------------------ 1. judge (locked)

    def _judge(self, model_id: str, served: Member | None) -> _Judged:
        versions = list_versions(self.model_dir, model_id)
        current = read_pointer(self.model_dir, model_id)
        if current is None:
            if not versions:
                return _Judged(None)
            # No pointer yet: pin what is served (or the newest), so that a new version is
            # judged instead of being served because it sorts last.
            current = served.path.name if served and served.path.name in versions else versions[-1]
            set_current(self.model_dir, model_id, current)
        before = read_record(self.model_dir, model_id)
        record = before.only(set(versions))
        current_manifest = self._manifest(model_id, current)
        if current_manifest is not None:
            record = record.served(current, current_manifest.val_acc)
        judged = _Judged(current)
        fresh = [v for v in versions if v > current and v not in record.decisions]
        for version in fresh:
            active_acc = current_manifest.val_acc if current_manifest is not None else None
            decision, member, outcome = self._gate(model_id, version, active_acc, record)
            judged.outcomes.append(outcome)
            if decision is None:
                continue
            record = record.decided(version, decision)
            if member is not None:
                # CURRENT before the record: a crash in between leaves the version served,
                # never a "promoted" decision that no CURRENT names.
                set_current(self.model_dir, model_id, version)
                record = record.served(version, member.manifest.val_acc)
                judged.current, judged.promoted = version, member
                current_manifest = member.manifest
        if record != before:
            write_record(self.model_dir, model_id, record)
        return judged

    def _manifest(self, model_id: str, version: str) -> Manifest | None:
        path = version_dir(self.model_dir, model_id, version) / MANIFEST_FILE
        try:
            return read_manifest(path, expected_hash=self.expected_hash)
        except ManifestError:
            return None

    def _gate(
        self, model_id: str, version: str, active_acc: float | None, record: GateRecord
    ) -> tuple[Decision | None, Member | None, ReloadOutcome]:
        """Judge one version. Decision None: not judged now (a passing error), try again."""
        try:
            manifest = read_manifest(
                version_dir(self.model_dir, model_id, version) / MANIFEST_FILE,
                expected_hash=self.expected_hash,
            )
            if not should_promote(
                manifest.val_acc, active_acc, self.tolerance, record.best_val_acc
            ):
                log.info(
                    "model_candidate",
                    model_id=model_id,
                    version=version,
                    val_acc=manifest.val_acc,
                    served_val_acc=active_acc,
                    best_val_acc=record.best_val_acc,
                    best_version=record.best_version,
                    tolerance=self.tolerance,
                )
                outcome = ReloadOutcome(
                    "held", model_id, version, None, manifest.val_acc, active_acc
                )
                return "held", None, outcome
            member = load_version(
                self.model_dir,
                model_id,
                version,
                expected_hash=self.expected_hash,
                backend=self.backend,
            )
        except _REFUSED as exc:
            log.error("model_refused", model_id=model_id, version=version, reason=str(exc))
            return "refused", None, ReloadOutcome("refused", model_id, version, reason=str(exc))
        except OSError as exc:
            log.warning("model_reload_failed", model_id=model_id, version=version, reason=str(exc))
            return None, None, ReloadOutcome("failed", model_id, version, reason=str(exc))
        log.info(
            "model_promoted",
            model_id=model_id,
            new_version=version,
            new_val_acc=manifest.val_acc,
            old_val_acc=active_acc,
            best_val_acc=record.best_val_acc,
        )
        outcome = ReloadOutcome("promoted", model_id, version, None, manifest.val_acc, active_acc)
        return "promoted", member, outcome

    # ------------------------------------------------------------------ 2. follow CURRENT

    def _follow(self, model_id: str, version: str, served: Member | None) -> list[ReloadOutcome]:
        key = (model_id, version)
        if self._failing.get(key):
            return []
        old_version = served.path.name if served else None
        try:
            member = load_version(
                self.model_dir,
                model_id,
                version,
                expected_hash=self.expected_hash,
                backend=self.backend,
            )
        except (ManifestError, ModelLoadError, ValueError, OSError) as exc:
            stored = (version_dir(self.model_dir, model_id, version) / MANIFEST_FILE).is_file()
            if key not in self._failing:  # log once per version, not once per pass
                log.error(
                    "model_reload_failed",
                    model_id=model_id,
                    version=version,
                    served_version=old_version,
                    reason=str(exc),
                    retry=not stored,
                )
            self._failing[key] = stored and isinstance(exc, _REFUSED)
            return [ReloadOutcome("failed", model_id, version, old_version, reason=str(exc))]
        self._failing.pop(key, None)
        swap_in(self.engine, member, self.active_models, self.temperature_override)
        log.info("model_followed", model_id=model_id, old_version=old_version, new_version=version)
        return [ReloadOutcome("followed", model_id, version, old_version, member.manifest.val_acc)]


async def reconcile_forever(
    reconcile_once: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    wake: asyncio.Event,
) -> None:
    """Run a pass every `interval_s`, or at once when `wake` is set (a `completed` event).

    `reconcile_once` must not raise for an expected failure; anything else is logged, and the
    next pass runs anyway: a failed pass is never the last.
    """
    interval_s = max(MIN_INTERVAL_S, interval_s)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval_s)
        wake.clear()
        try:
            await reconcile_once()
        except Exception as exc:  # a bad pass must never stop reconciling
            log.exception("reconcile_failed", reason=str(exc))
