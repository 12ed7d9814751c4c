"""One job's run, from a `digits:train` entry to its one committed outcome.

check (contract, arch, final, cancelled, duplicate, crash cap) -> started -> train in a slot
(progress relayed, best effort) -> slot freed -> upload (retried until the deadline) -> completed.
Every state change is a `lifecycle` transition written by `commit` in one fenced step; a run that
lost its entry to another worker writes nothing more. The child is killed on every exit from
training without an outcome, so no orphan run goes on training in a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from attrs import define, frozen
from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import now_iso
from handwriting_ai.contracts.jobs import TrainJob, job_from_fields, job_to_fields
from handwriting_ai.logging import get_logger
from handwriting_ai.models import UnknownArchError, arch_for_model_id
from handwriting_ai.settings import Settings
from handwriting_ai.streams.keys import FEEDBACK_STREAM
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import JobStatus, read_status
from handwriting_ai.training.progress import BatchProgress
from handwriting_ai.worker import lifecycle
from handwriting_ai.worker.child import ChildDone, ChildError, ChildJob
from handwriting_ai.worker.commit import Committed, commit
from handwriting_ai.worker.delivery import over_crash_cap, retry_decision, torch_threads
from handwriting_ai.worker.feedback import FEEDBACK_DIR, write_corrections
from handwriting_ai.worker.ledger import take_lock
from handwriting_ai.worker.lifecycle import JobRef, Limits, Transition
from handwriting_ai.worker.relay import ProgressRelay
from handwriting_ai.worker.slots import ChildGone, Slot
from handwriting_ai.worker.uploader import (
    UploadError,
    UploadKeyError,
    UploadRefusedError,
    upload_artifacts,
)

if TYPE_CHECKING:  # metrics.py imports `Outcome` from here
    from handwriting_ai.worker.metrics import WorkerMetrics

log = get_logger(__name__)
Outcome = Literal[
    "completed", "failed", "retried", "dead", "cancelled", "skipped", "abandoned", "lost"
]
CrashPoint = Literal["after_train", "after_upload", "after_commit"]


@define
class Running:
    """A job this worker holds: the heartbeat refreshes it, and cancels its slot on request."""

    entry_id: str
    request_id: str
    slot: Slot | None = None


@frozen
class WorkerParts:
    redis: Redis
    settings: Settings
    publisher: EventPublisher
    consumer: str
    concurrency: int
    lock_ttl_s: int
    limits: Limits
    metrics: WorkerMetrics
    crash_at: str = ""  # fault injection: SIGKILL ourselves at this point (tests only)


def _iso_at(epoch_s: float) -> str:
    stamp = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JobRun:
    def __init__(
        self, parts: WorkerParts, entry_id: str, fields: Mapping[str, str], deliveries: int
    ) -> None:
        self.parts = parts
        self.redis = parts.redis
        self.settings = parts.settings
        self.entry_id = entry_id
        self.fields = dict(fields)
        self.deliveries = deliveries
        request_id, user_id, model_id = lifecycle.entry_ids(fields, entry_id)
        self.ref = JobRef(request_id, user_id, model_id, entry_id, parts.consumer)
        self.attempt = 1
        self.failures = 0
        self.started_run = False  # the started transition was written: a stop releases it
        self.ended = False  # an ending was written (or refused): the entry is no longer ours
        self.log = log.bind(request_id=request_id, entry_id=entry_id)

    # ------------------------------------------------------------------ writing

    async def end(self, transition: Transition, outcome: Outcome) -> Outcome:
        written = await commit(
            self.redis, transition, entry_id=self.entry_id, consumer=self.parts.consumer
        )
        self.ended = True
        if written is Committed.LOST:
            self.log.warning("entry_lost", transition=transition.name)
            return "lost"
        self.log.info(f"job_{transition.name}", attempt=self.attempt)
        return outcome

    def _dead(
        self, kind: Literal["user", "system"], reason: str, status: Literal["failed", "dead"]
    ) -> Transition:
        return lifecycle.dead(
            self.ref,
            self.fields,
            kind=kind,
            reason=reason,
            status=status,
            attempt=self.attempt,
            deliveries=self.deliveries,
            limits=self.parts.limits,
            now=now_iso(),
        )

    def crash_point(self, point: CrashPoint) -> None:
        if self.parts.crash_at == point:
            self.log.warning("fault_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ checks

    async def _malformed(self, reason: str) -> Outcome:
        """A job that will never run: reported under `job-<entry id>` (see `entry_ids`)."""
        return await self.end(self._dead("user", reason, "failed"), "failed")

    async def check(self) -> TrainJob | Outcome:
        """The job to run, or how the entry ended without running."""
        if not self.fields:  # deleted while pending (Redis 6.2 keeps the id): nothing to run
            return await self.end(lifecycle.skipped(self.ref), "skipped")
        try:
            job = job_from_fields(self.fields, entry_id=self.entry_id)
            arch_for_model_id(job.model_id)
        except ContractError as exc:
            return await self._malformed("; ".join(exc.errors))
        except UnknownArchError as exc:
            return await self._malformed(f"{exc} @ $.model_id")
        self.ref = JobRef(
            job.request_id, job.user_id, job.model_id, self.entry_id, self.parts.consumer
        )
        self.log = log.bind(request_id=job.request_id, entry_id=self.entry_id)
        status = await read_status(self.redis, job.request_id)
        if status is not None and status.final:
            self.log.info("job_already_final", status=status.status)
            return await self.end(lifecycle.skipped(self.ref), "skipped")
        if status is not None and status.cancel_requested:
            return await self.end(self._cancelled(), "cancelled")
        holder = await take_lock(
            self.redis,
            job.request_id,
            consumer=self.parts.consumer,
            entry_id=self.entry_id,
            ttl_s=self.parts.lock_ttl_s,
        )
        if holder is not None:
            # Another entry of the same request_id is running: that entry carries the job.
            self.log.info("job_duplicate_running", holder=holder)
            return await self.end(lifecycle.skipped(self.ref), "skipped")
        return await self._start(job, status)

    async def _start(self, job: TrainJob, status: JobStatus | None) -> TrainJob | Outcome:
        # A status still `running` here is a run that never reached an outcome: its worker died.
        crashes = (status.crashes if status else 0) + int(
            status is not None and status.status == "running"
        )
        self.attempt = (status.attempts if status else 0) + 1
        self.failures = status.failures if status else 0
        if over_crash_cap(crashes, self.settings.streams.max_deliveries):
            reason = (
                f"its run ended the worker {crashes} times"
                f" (STREAMS__MAX_DELIVERIES={self.settings.streams.max_deliveries})"
            )
            return await self.end(self._dead("system", reason, "dead"), "dead")
        started = lifecycle.started(
            self.ref,
            total_epochs=job.epochs,
            attempt=self.attempt,
            crashes=crashes,
            limits=self.parts.limits,
            now=now_iso(),
        )
        written = await commit(
            self.redis, started, entry_id=self.entry_id, consumer=self.parts.consumer
        )
        if written is not Committed.WRITTEN:
            self.log.warning("entry_lost", transition="started")
            return "lost"
        self.started_run = True
        self.parts.metrics.started.inc()
        self.log.info("job_started", attempt=self.attempt, crashes=crashes)
        return job

    def _cancelled(self) -> Transition:
        return lifecycle.cancelled(
            self.ref, attempt=self.attempt, limits=self.parts.limits, now=now_iso()
        )

    # ------------------------------------------------------------------ the run

    async def run(
        self, running: Running, slot: Slot, free_slot: Callable[[], Awaitable[None]]
    ) -> Outcome:
        """`free_slot` gives the slot back: as soon as a run succeeds (the upload needs no slot),
        else after the ending is written (a killed child is replaced first, which takes time)."""
        try:
            checked = await self.check()
            if not isinstance(checked, TrainJob):
                return checked
            job = checked
            # The heartbeat refreshes the lock and polls cancellation by the job's own id.
            running.request_id = job.request_id
            deadline = asyncio.get_running_loop().time() + self.settings.streams.job_timeout_s
            running.slot = slot
            try:
                result = await self.train(job, slot, deadline)
            finally:
                running.slot = None
            if isinstance(result, ChildDone):
                await free_slot()
                self.crash_point("after_train")
                return await self.finish(job, result, deadline)
            if result.kind == "cancelled":
                return await self.end(self._cancelled(), "cancelled")
            if result.kind == "user":
                return await self.end(self._dead("user", result.message, "failed"), "failed")
            return await self.system_failure(job, result.message)
        finally:
            await free_slot()

    async def system_failure(self, job: TrainJob, message: str) -> Outcome:
        streams = self.settings.streams
        self.failures += 1
        decision = retry_decision(
            self.failures, retry_max=streams.retry_max, intervals_s=streams.retry_intervals_s
        )
        if not decision.will_retry:
            return await self.end(self._dead("system", message, "dead"), "dead")
        due_s = time.time() + decision.delay_s
        transition = lifecycle.retried(
            self.ref,
            job_to_fields(job),  # names its request_id, so a redis-cli job keeps its id
            message=message,
            attempt=self.attempt,
            failures=self.failures,
            due_ms=int(due_s * 1000),
            retry_at=_iso_at(due_s),
            limits=self.parts.limits,
            now=now_iso(),
        )
        return await self.end(transition, "retried")

    def _child_job(self, job: TrainJob, feedback_path: Path | None) -> ChildJob:
        settings = self.settings
        return ChildJob(
            token=uuid.uuid4().hex,
            request_id=job.request_id,
            entry_id=self.entry_id,
            model_id=job.model_id,
            arch=arch_for_model_id(job.model_id),
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            seed=job.seed,
            augment=job.augment,
            notes=job.notes,
            # APP__THREADS pins it (several workers on one machine); else the slots share cores.
            threads=settings.app.threads
            or torch_threads(os.cpu_count() or 1, self.parts.concurrency),
            data_root=str(settings.app.data_root),
            model_dir=str(settings.app.artifacts_dir / "digits"),
            batch_every=settings.events.batch_every,
            feedback_path=str(feedback_path or ""),
            feedback_holdout=settings.feedback.holdout_fraction,
            feedback_repeat=settings.feedback.repeat,
        )

    async def corrections(self, job: TrainJob, deadline: float) -> Path | ChildError | None:
        """A `use_feedback` job's corrections file for the child (None: no corrections, or a
        job without `use_feedback`). Redis failing here is ours: the job is retried."""
        if not job.use_feedback:
            return None
        left = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                written = await write_corrections(
                    self.redis,
                    self.settings.app.artifacts_dir / FEEDBACK_DIR,
                    uuid.uuid4().hex,
                    # A file older than any job may run belongs to no live job.
                    stale_after_s=2.0 * self.settings.streams.job_timeout_s,
                    logger=self.log,
                )
        except TimeoutError:
            return ChildError(
                "system", f"training took longer than {self.settings.streams.job_timeout_s} s"
            )
        except (RedisError, OSError, ValueError) as exc:
            return ChildError(
                "system", f"could not read the corrections on {FEEDBACK_STREAM}: {exc}"
            )
        return None if written is None else written[0]

    async def train(self, job: TrainJob, slot: Slot, deadline: float) -> ChildDone | ChildError:
        """`train_in_slot`, with a `use_feedback` job's corrections written for the child first
        and deleted once it is done with them."""
        feedback = await self.corrections(job, deadline)
        if isinstance(feedback, ChildError):
            return feedback
        try:
            return await self.train_in_slot(self._child_job(job, feedback), slot, deadline)
        finally:
            if feedback is not None:
                with contextlib.suppress(OSError):
                    feedback.unlink()

    async def train_in_slot(
        self, child_job: ChildJob, slot: Slot, deadline: float
    ) -> ChildDone | ChildError:
        """The child's outcome. The deadline bounds each wait for the child's next message. A
        child that reported its outcome (done, failed, cancelled) is idle and takes the next job;
        on any exit without one (timeout, a stop, a lost pipe) it is killed, so no orphan run
        is left in the slot."""
        relay = ProgressRelay(
            self.redis,
            self.parts.publisher,
            self.ref,
            timeout_s=self.settings.streams.heartbeat_interval_s,
        )
        loop = asyncio.get_running_loop()
        metrics = self.parts.metrics
        messages = slot.run(child_job)
        outcome: ChildDone | ChildError | None = None
        reported: ChildDone | ChildError | None = None  # said by the child itself
        try:
            while outcome is None:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(anext(messages), left)
                if isinstance(message, ChildDone | ChildError):
                    outcome = reported = message
                elif isinstance(message, ChildGone):
                    outcome = ChildError(
                        "system", f"training process ended (exit code {message.exitcode})"
                    )
                else:
                    if isinstance(message, BatchProgress):
                        metrics.training_rate(self.entry_id, message.samples_per_sec)
                    await relay.progress(message)
        except StopAsyncIteration:
            outcome = ChildError("system", "training process gave no result")
        except TimeoutError:
            outcome = ChildError(
                "system", f"training took longer than {self.settings.streams.job_timeout_s} s"
            )
        finally:
            metrics.training_rate(self.entry_id, None)
            await messages.aclose()
            if reported is None:
                slot.kill()  # no orphan run: the slot is replaced before its next job
        if isinstance(outcome, ChildDone):
            await relay.artifact(outcome.run_id, outcome.directory)
        return outcome

    async def finish(self, job: TrainJob, done: ChildDone, deadline: float) -> Outcome:
        try:
            uploaded = await upload_artifacts(
                Path(done.directory),
                job.model_id,
                api_url=self.settings.handwriting_api_url,
                api_key=self.settings.handwriting_api_key,
                deadline=deadline,
                on_retry=self.parts.metrics.upload_retries.inc,
            )
        except UploadKeyError as exc:
            self.log.error("upload_key_refused", error=str(exc))
            message = f"{exc}; the trained artifacts are kept in {done.directory}"
            return await self.end(self._dead("system", message, "dead"), "dead")
        except UploadRefusedError as exc:
            message = f"{exc}; the trained artifacts are kept in {done.directory}"
            return await self.end(self._dead("system", message, "dead"), "dead")
        except UploadError as exc:
            return await self.system_failure(job, str(exc))
        self.crash_point("after_upload")
        result = lifecycle.Result(
            run_id=done.run_id,
            version=uploaded.version,
            val_acc=done.val_acc,
            test_acc=done.test_acc,
            upload_status=uploaded.status,
            model_bytes=uploaded.model_bytes,
            manifest_bytes=uploaded.manifest_bytes,
            pruned_count=done.pruned_count,
            use_feedback=job.use_feedback,
            feedback_acc=done.feedback_acc,
            feedback_holdout=done.feedback_holdout,
            feedback_count=done.feedback_count,
        )
        transition = lifecycle.completed(self.ref, result, limits=self.parts.limits, now=now_iso())
        outcome = await self.end(transition, "completed")
        self.crash_point("after_commit")
        return outcome
