"""Keep every API replica serving what the registry says, and judge versions no event did.

The registry (`registry/`: the model directory's files, or Redis when replicas share it) is the
truth, not any one process's memory of events. Each replica runs `Reconciler.reconcile` at start
(before serving), whenever a `completed` or `digits.model.changed.v1` event arrives, and every
`DIGITS__RECONCILE_INTERVAL_S`. For each served model id (the registry's served set, or
`DIGITS__ACTIVE_MODEL` while it holds none):

0. Sync (Redis only): the model directory fetches the versions it lacks.
1. Judge, under the model id's registry lock so that replicas take turns: every stored version
   newer than `current` that was never judged, oldest first, goes through the promotion gate
   against `current`'s val_acc and the best val_acc ever served. One that passes and loads
   becomes `current`. Each decision (promoted, held, refused) is kept in the gate record with
   that best, so no version is judged twice, by this replica or another, across restarts, and is
   published as an event. A version that could not be read for a passing reason (an OS error)
   gets no decision: the next pass judges it again. While the model id is pinned nothing is
   judged: new versions wait as candidates.
2. Follow: when `current` names a version other than the one served (this pass, another replica
   or an operator moved it), load it. A failed load is tried again on the next pass; one whose
   files are there but refused is not, until `current` names another version.
3. Swap once: the served ensemble becomes the served set's members, in order.

So a replica that was down for an event, or whose reload failed or timed out, converges on its
next pass. The floor lives in the record rather than being recomputed from manifests because
manifests do not say which versions were ever served, and a held or broken candidate's val_acc
must never raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import torch
from attrs import define, evolve, field
from redis.exceptions import RedisError

from handwriting_ai.contracts.events import ModelChanged, now_iso
from handwriting_ai.inference.engine import EngineHolder, Ensemble, Member, ModelLoadError
from handwriting_ai.inference.manifest import Manifest, ManifestError, read_manifest
from handwriting_ai.inference.onnx_backend import Backend
from handwriting_ai.inference.promotion import Decision, GateRecord, hold_reason, should_promote
from handwriting_ai.inference.reload import ReloadOutcome, load_version
from handwriting_ai.inference.store import MANIFEST_FILE, list_versions, version_dir
from handwriting_ai.logging import get_logger
from handwriting_ai.registry.state import DirState, RegistryState
from handwriting_ai.training.feedback import I64, U8
from handwriting_ai.training.loop import accuracy, predict_logits

log = get_logger(__name__)
LOCK_TIMEOUT_S = 60.0
MIN_INTERVAL_S = 0.05
# Refusals that no retry can fix: the version's files are there and wrong.
_REFUSED = (ManifestError, ModelLoadError, ValueError)
FEEDBACK_EPSILON = 1e-9
# The registry cannot be read now (Redis down, a disk error): the next pass tries again.
_UNREACHABLE = (RedisError, OSError)


@define
class _Judged:
    """What a judging pass leaves for the follow step."""

    current: str | None
    promoted: Member | None = None
    outcomes: list[ReloadOutcome] = field(factory=list)


@define
class Reconciler:
    """Blocking (disk, Redis and torch): run `reconcile` in a thread. One pass at a time."""

    engine: EngineHolder
    state: RegistryState
    model_dir: Path
    default_served: tuple[str, ...]
    tolerance: float
    expected_hash: str
    temperature_override: float | None = None
    backend: Backend = "torch"
    lock_timeout_s: float = LOCK_TIMEOUT_S
    # The held-back corrections by read request_id: (pixels (N, 28, 28) uint8, labels), or None
    # when there is no store (no Redis); the gate holds a version that reads them worse.
    feedback: Callable[[Sequence[str]], tuple[U8, I64] | None] | None = None
    _busy: threading.Lock = field(factory=threading.Lock)
    # (model_id, version) of current versions that failed to load -> the failure is permanent.
    _failing: dict[tuple[str, str], bool] = field(factory=dict)
    # model_id (or "" for the pass) -> why it failed last pass (logged when it changes).
    _cannot: dict[str, str] = field(factory=dict)

    def reconcile(self) -> list[ReloadOutcome]:
        """One pass; skipped (empty) while a previous pass still runs."""
        if not self._busy.acquire(blocking=False):
            return []
        try:
            try:
                outcomes = self._pass(self.state, judge=True)
                self._cannot.pop("", None)
            except _UNREACHABLE as exc:
                self._once("", "registry_unreachable", str(exc))
                if self.engine.ensemble is not None or isinstance(self.state, DirState):
                    return []
                # Starting while the shared registry is down: serve what this replica's own
                # directory says (the registry's last state, kept there by every change).
                return self._pass(DirState(self.model_dir), judge=False)
            return outcomes
        finally:
            self._busy.release()

    def _once(self, key: str, event: str, reason: str) -> None:
        if self._cannot.get(key) != reason:
            log.warning(event, model_id=key or None, reason=reason)
        self._cannot[key] = reason

    def _pass(self, state: RegistryState, *, judge: bool) -> list[ReloadOutcome]:
        served_ids = state.served() or self.default_served
        ensemble = self.engine.ensemble
        before = {m.manifest.model_id: m for m in (ensemble.members if ensemble else ())}
        members = dict(before)
        outcomes: list[ReloadOutcome] = []
        for model_id in served_ids:
            try:
                outcomes.extend(self._reconcile(state, model_id, served_ids, members, judge))
            except (*_UNREACHABLE, ValueError, RuntimeError) as exc:
                log.error("reconcile_failed", model_id=model_id, reason=str(exc))
        if judge:
            try:
                state.share_local(served_ids)
            except _UNREACHABLE as exc:
                log.warning("registry_share_failed", reason=str(exc))
        chosen = tuple(members[i] for i in served_ids if i in members)
        if chosen and chosen != (ensemble.members if ensemble else ()):
            old = self.engine.swap(Ensemble(chosen, self._override(ensemble)))
            dropped = sorted(set(before) - set(served_ids))
            if dropped or old is None:
                log.info("ensemble_changed", served=list(served_ids), dropped=dropped)
        elif not chosen and before:
            log.error("ensemble_kept", served=list(served_ids), reason="no served model loads")
        return outcomes

    def _override(self, ensemble: Ensemble | None) -> float | None:
        return ensemble.temperature_override if ensemble is not None else self.temperature_override

    def _reconcile(
        self,
        state: RegistryState,
        model_id: str,
        served_ids: tuple[str, ...],
        members: dict[str, Member],
        judge: bool,
    ) -> list[ReloadOutcome]:
        state.sync(model_id)
        versions = list_versions(self.model_dir, model_id)
        if not versions:
            self._once(model_id, "model_missing", f"no stored version in {self.model_dir}")
            return []
        served = members.get(model_id)
        judged: _Judged | None = None
        if judge:
            try:
                with state.lock(model_id, timeout_s=self.lock_timeout_s):
                    judged = self._judge(state, model_id, served, versions, served_ids)
                self._cannot.pop(model_id, None)
            except OSError as exc:  # TimeoutError included; a read-only model dir only follows
                self._once(model_id, "reconcile_judge_failed", str(exc))
        if judged is None:
            judged = _Judged(state.model(model_id).current or versions[-1])
        if judged.promoted is not None:
            members[model_id] = judged.promoted
        elif judged.current is not None and (served is None or served.path.name != judged.current):
            member, outcomes = self._follow(model_id, judged.current, served)
            judged.outcomes.extend(outcomes)
            if member is not None:
                members[model_id] = member
        return judged.outcomes

    # ------------------------------------------------------------------ 1. judge (locked)

    def _judge(
        self,
        state: RegistryState,
        model_id: str,
        served: Member | None,
        versions: list[str],
        served_ids: tuple[str, ...],
    ) -> _Judged:
        before = state.model(model_id)
        now = before
        if now.current is None:
            # No pointer yet: pin what is served (or the newest), so that a new version is
            # judged instead of being served because it sorts last.
            start = served.path.name if served and served.path.name in versions else versions[-1]
            now = now.moved_to(start)
        current = now.current
        assert current is not None
        record = now.gate.only(set(versions))
        if current not in record.decisions:
            # Served, so decided: were an operator to serve an older version, this one must
            # not come back by itself as "newer and never judged".
            record = record.decided(current, "promoted")
        current_manifest = self._manifest(model_id, current)
        if current_manifest is not None:
            record = record.served(current, current_manifest.val_acc)
        judged = _Judged(current)
        changes: list[ModelChanged] = []
        fresh = [v for v in versions if v > current and v not in record.decisions]
        for version in fresh if now.pinned is None else []:
            active_acc = current_manifest.val_acc if current_manifest is not None else None
            decision, member, outcome, manifest = self._gate(
                model_id, version, active_acc, record, served
            )
            judged.outcomes.append(outcome)
            if decision is None:
                continue
            record = record.decided(version, decision, outcome.reason)
            changes.append(
                ModelChanged(
                    request_id=manifest.request_id if manifest is not None else "",
                    user_id=0,
                    model_id=model_id,
                    run_id=manifest.run_id if manifest is not None else None,
                    ts=now_iso(),
                    action=decision,
                    by="gate",
                    version=version,
                    old_version=judged.current if decision == "promoted" else None,
                    served=list(served_ids),
                    reason=outcome.reason,
                )
            )
            if member is not None:
                now = now.moved_to(version)
                record = record.served(version, member.manifest.val_acc)
                judged.current, judged.promoted = version, member
                current_manifest, served = member.manifest, member
        now = evolve(now, gate=record)
        if now != before:
            state.put_model(model_id, now)
        for change in changes:
            try:
                state.publish(change)
            except RedisError as exc:  # the decision stands; followers miss one event
                log.warning("model_event_lost", model_id=model_id, reason=str(exc))
        return judged

    def _manifest(self, model_id: str, version: str) -> Manifest | None:
        path = version_dir(self.model_dir, model_id, version) / MANIFEST_FILE
        try:
            return read_manifest(path, expected_hash=self.expected_hash)
        except (ManifestError, OSError):
            return None

    def _gate(
        self,
        model_id: str,
        version: str,
        active_acc: float | None,
        record: GateRecord,
        served: Member | None,
    ) -> tuple[Decision | None, Member | None, ReloadOutcome, Manifest | None]:
        """Judge one version. Decision None: not judged now (a passing error), try again."""
        manifest: Manifest | None = None
        try:
            manifest = read_manifest(
                version_dir(self.model_dir, model_id, version) / MANIFEST_FILE,
                expected_hash=self.expected_hash,
            )
            bars = (manifest.val_acc, active_acc, self.tolerance, record.best_val_acc)
            if not should_promote(*bars):
                reason = hold_reason(*bars)
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
                    "held", model_id, version, None, manifest.val_acc, active_acc, reason
                )
                return "held", None, outcome, manifest
            member = load_version(
                self.model_dir,
                model_id,
                version,
                expected_hash=self.expected_hash,
                backend=self.backend,
            )
            worse = self._worse_on_feedback(member, served)
            if worse:
                log.info("model_candidate", model_id=model_id, version=version, reason=worse)
                outcome = ReloadOutcome(
                    "held", model_id, version, None, manifest.val_acc, active_acc, worse
                )
                return "held", None, outcome, manifest
        except _REFUSED as exc:
            log.error("model_refused", model_id=model_id, version=version, reason=str(exc))
            outcome = ReloadOutcome("refused", model_id, version, reason=str(exc))
            return "refused", None, outcome, manifest
        except OSError as exc:
            log.warning("model_reload_failed", model_id=model_id, version=version, reason=str(exc))
            return None, None, ReloadOutcome("failed", model_id, version, reason=str(exc)), None
        log.info(
            "model_promoted",
            model_id=model_id,
            new_version=version,
            new_val_acc=manifest.val_acc,
            old_val_acc=active_acc,
            best_val_acc=record.best_val_acc,
        )
        outcome = ReloadOutcome("promoted", model_id, version, None, manifest.val_acc, active_acc)
        return "promoted", member, outcome, manifest

    def _worse_on_feedback(self, member: Member, served: Member | None) -> str:
        """Why `member` reads held-back corrections (its run's, and the served version's run's)
        worse than the served version of its model does ("" when not, or when there is nothing
        to compare). Raises OSError
        (RedisError included) when the corrections cannot be read now: judged on a later pass."""
        if served is None or self.feedback is None:
            return ""
        # The candidate's held-back corrections, and the served version's: a version trained
        # without corrections must not replace one that learnt them, unseen.
        held_back = sorted({*member.manifest.feedback_holdout, *served.manifest.feedback_holdout})
        if not held_back:
            return ""
        try:
            found = self.feedback(held_back)
        except RedisError as exc:
            raise OSError(f"corrections unreadable: {exc}") from None
        if found is None or not len(found[1]):
            return ""
        pixels, labels = torch.from_numpy(found[0]), torch.from_numpy(found[1])
        new = accuracy(predict_logits(member.module, pixels), labels)
        old = accuracy(predict_logits(served.module, pixels), labels)
        if new + FEEDBACK_EPSILON >= old:
            return ""
        return (
            f"on {len(labels)} held-back corrections it reads {new:.4f},"
            f" below the served version's {old:.4f}"
        )

    # ------------------------------------------------------------------ 2. follow current

    def _follow(
        self, model_id: str, version: str, served: Member | None
    ) -> tuple[Member | None, list[ReloadOutcome]]:
        key = (model_id, version)
        if self._failing.get(key):
            return None, []
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
            permanent = stored and isinstance(exc, _REFUSED)
            if key not in self._failing:  # log once per version, not once per pass
                log.error(
                    "model_refused" if permanent else "model_reload_failed",
                    model_id=model_id,
                    version=version,
                    served_version=old_version,
                    reason=str(exc),
                    retry=not stored,
                )
            self._failing[key] = permanent
            return None, [ReloadOutcome("failed", model_id, version, old_version, reason=str(exc))]
        self._failing.pop(key, None)
        event = "model_loaded" if served is None else "model_followed"
        log.info(event, model_id=model_id, old_version=old_version, new_version=version)
        outcome = ReloadOutcome("followed", model_id, version, old_version, member.manifest.val_acc)
        return member, [outcome]


async def reconcile_forever(
    reconcile_once: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    wake: asyncio.Event,
) -> None:
    """Run a pass every `interval_s`, or at once when `wake` is set (an event).

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
