"""One job's lifecycle, from a `digits:train` entry to its acknowledged outcome.

check (poison cap, contract, arch, duplicate) -> running -> train in a slot (progress events)
-> artifact -> upload -> prune -> completed. Every ending stores its final event and status
before the XACK, shielded from cancellation; an abandoned job (shutdown, lost entry) is never
acknowledged, so another worker takes it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal

from attrs import define, frozen
from redis.asyncio import Redis

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import (
    TrainArtifact,
    TrainBatch,
    TrainBest,
    TrainCompleted,
    TrainEpoch,
    TrainFailed,
    TrainPrune,
    TrainStarted,
    TrainUpload,
    now_iso,
)
from handwriting_ai.contracts.jobs import TrainJob, job_from_fields, job_to_fields
from handwriting_ai.logging import get_logger
from handwriting_ai.models import UnknownArchError, arch_for_model_id
from handwriting_ai.settings import Settings
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import read_status
from handwriting_ai.training.progress import BatchProgress, BestProgress, EpochProgress
from handwriting_ai.worker import ledger
from handwriting_ai.worker.child import ChildDone, ChildError, ChildJob
from handwriting_ai.worker.delivery import over_delivery_cap, retry_decision, torch_threads
from handwriting_ai.worker.slots import ChildGone, Slot
from handwriting_ai.worker.uploader import UploadError, upload_artifacts

log = get_logger(__name__)
Outcome = Literal["completed", "failed", "retried", "dead", "cancelled", "skipped", "abandoned"]
CANCELLED_MESSAGE = "cancelled by request"


@frozen
class Ids:
    """What every event of the job carries, known even when the job itself is malformed."""

    request_id: str
    user_id: int
    model_id: str


@define
class Running:
    """A job in a slot: the consumer's heartbeat reads this to refresh and cancel it."""

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


def ids_of(fields: Mapping[str, str], entry_id: str) -> Ids:
    user = fields.get("user_id", "0")
    return Ids(
        request_id=fields.get("request_id") or f"job-{entry_id}",
        user_id=int(user) if user.isdigit() else 0,
        model_id=fields.get("model_id", ""),
    )


async def _shielded(write: Callable[[], Awaitable[None]]) -> None:
    """Final writes run to the end even if the job task is cancelled meanwhile (arq's shield)."""
    await asyncio.shield(write())


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
        self.ids = ids_of(fields, entry_id)
        self.run_id: str | None = None
        self.attempt = 1
        self.total_epochs = 1
        self.log = log.bind(request_id=self.ids.request_id, entry_id=entry_id)

    # ------------------------------------------------------------------ events

    async def _fail(
        self, kind: Literal["user", "system"], message: str, *, will_retry: bool = False
    ) -> None:
        await self.parts.publisher.publish(
            TrainFailed(
                request_id=self.ids.request_id,
                user_id=self.ids.user_id,
                model_id=self.ids.model_id,
                run_id=self.run_id,
                ts=now_iso(),
                error_kind=kind,
                message=message,
                attempt=self.attempt,
                will_retry=will_retry,
            )
        )

    # ------------------------------------------------------------------ endings

    async def dead_letter(
        self, kind: Literal["user", "system"], reason: str, *, status: str
    ) -> None:
        async def write() -> None:
            await self._fail(kind, reason)
            await ledger.finish_dead(
                self.redis,
                self.ids.request_id,
                self.entry_id,
                self.fields,
                status=status,
                error_kind=kind,
                reason=reason,
                deliveries=self.deliveries,
                ttl_s=self.settings.streams.failure_ttl_s,
            )

        await _shielded(write)
        self.log.warning("job_dead_lettered", kind=kind, reason=reason, status=status)

    async def system_failure(self, job: TrainJob, message: str) -> Outcome:
        streams = self.settings.streams
        decision = retry_decision(
            self.attempt, retry_max=streams.retry_max, intervals_s=streams.retry_intervals_s
        )
        if not decision.will_retry:
            await self.dead_letter("system", message, status="dead")
            return "dead"
        # The retry entry names its request_id, so a redis-cli job keeps its id across attempts.
        job_fields = job_to_fields(job)

        async def write() -> None:
            await self._fail("system", message, will_retry=True)
            await ledger.schedule_retry(
                self.redis,
                self.ids.request_id,
                self.entry_id,
                job_fields,
                delay_s=decision.delay_s,
                message=message,
            )

        await _shielded(write)
        self.log.warning("job_retry_scheduled", delay_s=decision.delay_s, message=message)
        return "retried"

    async def cancelled(self) -> Outcome:
        async def write() -> None:
            await self._fail("user", CANCELLED_MESSAGE)
            await ledger.finish(
                self.redis,
                self.ids.request_id,
                self.entry_id,
                {"status": "cancelled", "error_kind": "user", "message": CANCELLED_MESSAGE},
                ttl_s=self.settings.streams.failure_ttl_s,
            )

        await _shielded(write)
        self.log.info("job_cancelled")
        return "cancelled"

    # ------------------------------------------------------------------ checks

    async def check(self) -> TrainJob | Outcome:
        """The job to run, or how the entry ended without running."""
        if not self.fields:  # deleted while pending (Redis 6.2 keeps the id): nothing to run
            await _shielded(lambda: ledger.ack_only(self.redis, self.entry_id))
            return "skipped"
        if over_delivery_cap(self.deliveries, self.settings.streams.max_deliveries):
            reason = (
                f"delivered {self.deliveries} times (max {self.settings.streams.max_deliveries}):"
                " the job keeps ending its worker"
            )
            await self.dead_letter("system", reason, status="dead")
            return "dead"
        try:
            job = job_from_fields(self.fields, entry_id=self.entry_id)
            arch_for_model_id(job.model_id)
        except ContractError as exc:
            await self.dead_letter("user", "; ".join(exc.errors), status="failed")
            return "failed"
        except UnknownArchError as exc:
            await self.dead_letter("user", str(exc), status="failed")
            return "failed"
        self.ids = Ids(job.request_id, job.user_id, job.model_id)
        status = await read_status(self.redis, job.request_id)
        if status is not None and status.final:
            self.log.info("job_already_final", status=status.status)
            await _shielded(lambda: ledger.ack_only(self.redis, self.entry_id))
            return "skipped"
        if status is not None and status.cancel_requested:
            return await self.cancelled()
        holder = await ledger.take_lock(
            self.redis,
            job.request_id,
            consumer=self.parts.consumer,
            entry_id=self.entry_id,
            ttl_s=self.parts.lock_ttl_s,
        )
        if holder is not None:
            # Another entry of the same request_id is running: that entry carries the job.
            self.log.info("job_duplicate_running", holder=holder)
            await _shielded(lambda: ledger.ack_only(self.redis, self.entry_id))
            return "skipped"
        return job

    # ------------------------------------------------------------------ the run

    async def run(self, running: Running, slot: Slot) -> Outcome:
        checked = await self.check()
        if not isinstance(checked, TrainJob):
            return checked
        job = checked
        await ledger.ensure_status(
            self.redis,
            job.request_id,
            model_id=job.model_id,
            user_id=job.user_id,
            entry_id=self.entry_id,
        )
        self.attempt = await ledger.mark_running(
            self.redis, job.request_id, consumer=self.parts.consumer, entry_id=self.entry_id
        )
        self.total_epochs = job.epochs
        self.log.info("job_started", attempt=self.attempt, deliveries=self.deliveries)
        await self.parts.publisher.publish(
            TrainStarted(
                request_id=job.request_id,
                user_id=job.user_id,
                model_id=job.model_id,
                ts=now_iso(),
                total_epochs=job.epochs,
                attempt=self.attempt,
            )
        )
        running.slot = slot
        try:
            result = await self.train(job, slot)
        finally:
            running.slot = None
        if isinstance(result, ChildError):
            if result.kind == "cancelled":
                return await self.cancelled()
            if result.kind == "user":
                await self.dead_letter("user", result.message, status="failed")
                return "failed"
            return await self.system_failure(job, result.message)
        try:
            return await self.publish_result(job, result)
        except UploadError as exc:
            return await self.system_failure(job, str(exc))

    async def train(self, job: TrainJob, slot: Slot) -> ChildDone | ChildError:
        settings = self.settings
        request = ChildJob(
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
        )
        # The deadline bounds each wait for the child's next message and is checked after every
        # one, rather than cancelling the whole loop: a cancellation landing inside progress
        # publishing (a Redis round trip) could be absorbed there, and the timeout with it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.streams.job_timeout_s
        messages = slot.run(request)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(anext(messages), left)
                if isinstance(message, ChildDone | ChildError):
                    return message
                if isinstance(message, ChildGone):
                    return ChildError(
                        "system", f"training process ended (exit code {message.exitcode})"
                    )
                await self.progress(message)
        except StopAsyncIteration:
            pass
        except TimeoutError:
            slot.kill()
            return ChildError(
                "system", f"training took longer than {settings.streams.job_timeout_s} s"
            )
        except asyncio.CancelledError:
            slot.kill()  # shutdown or a lost entry: the job stays pending for another worker
            raise
        return ChildError("system", "training process gave no result")

    async def progress(self, message: BatchProgress | EpochProgress | BestProgress) -> None:
        ids = self.ids
        if isinstance(message, BatchProgress):
            await self.parts.publisher.publish(
                TrainBatch(
                    request_id=ids.request_id,
                    user_id=ids.user_id,
                    model_id=ids.model_id,
                    ts=now_iso(),
                    epoch=message.epoch,
                    total_epochs=message.total_epochs,
                    batch=message.batch,
                    total_batches=message.total_batches,
                    batch_loss=max(0.0, message.batch_loss),
                    batch_acc=min(1.0, max(0.0, message.batch_acc)),
                    avg_loss=max(0.0, message.avg_loss),
                    samples_per_sec=max(0.0, message.samples_per_sec),
                )
            )
            await ledger.set_progress(
                self.redis,
                ids.request_id,
                {
                    "epoch": message.epoch,
                    "total_epochs": message.total_epochs,
                    "batch": message.batch,
                    "total_batches": message.total_batches,
                },
            )
        elif isinstance(message, EpochProgress):
            await self.parts.publisher.publish(
                TrainEpoch(
                    request_id=ids.request_id,
                    user_id=ids.user_id,
                    model_id=ids.model_id,
                    ts=now_iso(),
                    epoch=message.epoch,
                    total_epochs=message.total_epochs,
                    train_loss=max(0.0, message.train_loss),
                    val_acc=min(1.0, max(0.0, message.val_acc)),
                    time_s=max(0.0, message.time_s),
                )
            )
            await ledger.set_progress(
                self.redis,
                ids.request_id,
                {"epoch": message.epoch, "total_epochs": message.total_epochs},
            )
        else:
            await self.parts.publisher.publish(
                TrainBest(
                    request_id=ids.request_id,
                    user_id=ids.user_id,
                    model_id=ids.model_id,
                    ts=now_iso(),
                    epoch=message.epoch,
                    val_acc=min(1.0, max(0.0, message.val_acc)),
                )
            )

    async def publish_result(self, job: TrainJob, done: ChildDone) -> Outcome:
        self.run_id = done.run_id
        rid, uid, mid, run_id = job.request_id, job.user_id, job.model_id, done.run_id
        publish = self.parts.publisher.publish
        await publish(
            TrainArtifact(
                request_id=rid,
                user_id=uid,
                model_id=mid,
                run_id=run_id,
                ts=now_iso(),
                path=done.directory,
            )
        )
        uploaded = await upload_artifacts(
            Path(done.directory),
            job.model_id,
            api_url=self.settings.handwriting_api_url,
            api_key=self.settings.handwriting_api_key,
        )
        await publish(
            TrainUpload(
                request_id=rid,
                user_id=uid,
                model_id=mid,
                run_id=run_id,
                ts=now_iso(),
                status=uploaded.status,
                model_bytes=uploaded.model_bytes,
                manifest_bytes=uploaded.manifest_bytes,
            )
        )
        await publish(
            TrainPrune(
                request_id=rid,
                user_id=uid,
                model_id=mid,
                run_id=run_id,
                ts=now_iso(),
                deleted_count=done.pruned_count,
            )
        )
        result: dict[str, str | float | None] = {
            "version": uploaded.version,
            "val_acc": done.val_acc,
            "test_acc": done.test_acc,
            "run_id": done.run_id,
        }

        async def write() -> None:
            await publish(
                TrainCompleted(
                    request_id=rid,
                    user_id=uid,
                    model_id=mid,
                    run_id=run_id,
                    ts=now_iso(),
                    val_acc=min(1.0, max(0.0, done.val_acc)),
                    test_acc=done.test_acc,
                    version=uploaded.version,
                )
            )
            await ledger.finish(
                self.redis,
                job.request_id,
                self.entry_id,
                {"status": "completed", "result": _json(result), "error_kind": "", "message": ""},
                ttl_s=self.settings.streams.result_ttl_s,
            )

        await _shielded(write)
        self.log.info("job_completed", version=uploaded.version, val_acc=done.val_acc)
        return "completed"


def _json(value: Mapping[str, str | float | None]) -> str:
    return json.dumps(dict(value), sort_keys=True)
