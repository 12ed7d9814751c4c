"""The event relay: a training child's progress becomes `batch`/`epoch`/`best`/`artifact` events
and the status hash's `progress`.

Best effort by design. Progress is for people watching; the job's truth is in the fenced commits
of `lifecycle.py`. A Redis that is down or paused drops (or delays, at most `timeout_s`) a
progress write and never ends, stalls or fails the job.
"""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.contracts.events import (
    TrainArtifact,
    TrainBatch,
    TrainBest,
    TrainEpoch,
    TrainEvent,
    now_iso,
)
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import status_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.training.progress import BatchProgress, BestProgress, EpochProgress
from handwriting_ai.worker.lifecycle import JobRef

log = get_logger(__name__)
Progress = BatchProgress | EpochProgress | BestProgress


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def progress_event(ref: JobRef, message: Progress, now: str) -> TrainEvent:
    """Pure: the event for one progress message (values clamped into their contract)."""
    rid, uid, mid = ref.request_id, ref.user_id, ref.model_id
    if isinstance(message, BatchProgress):
        return TrainBatch(
            request_id=rid,
            user_id=uid,
            model_id=mid,
            ts=now,
            epoch=message.epoch,
            total_epochs=message.total_epochs,
            batch=message.batch,
            total_batches=message.total_batches,
            batch_loss=max(0.0, message.batch_loss),
            batch_acc=_unit(message.batch_acc),
            avg_loss=max(0.0, message.avg_loss),
            samples_per_sec=max(0.0, message.samples_per_sec),
        )
    if isinstance(message, EpochProgress):
        return TrainEpoch(
            request_id=rid,
            user_id=uid,
            model_id=mid,
            ts=now,
            epoch=message.epoch,
            total_epochs=message.total_epochs,
            train_loss=max(0.0, message.train_loss),
            val_acc=_unit(message.val_acc),
            time_s=max(0.0, message.time_s),
        )
    return TrainBest(
        request_id=rid,
        user_id=uid,
        model_id=mid,
        ts=now,
        epoch=message.epoch,
        val_acc=_unit(message.val_acc),
    )


def progress_fields(message: Progress) -> dict[str, int] | None:
    """Pure: what the status hash's `progress` shows after this message (None: unchanged)."""
    if isinstance(message, BatchProgress):
        return {
            "epoch": message.epoch,
            "total_epochs": message.total_epochs,
            "batch": message.batch,
            "total_batches": message.total_batches,
        }
    if isinstance(message, EpochProgress):
        return {"epoch": message.epoch, "total_epochs": message.total_epochs}
    return None


class ProgressRelay:
    def __init__(
        self, redis: Redis, publisher: EventPublisher, ref: JobRef, *, timeout_s: float
    ) -> None:
        self.redis = redis
        self.publisher = publisher
        self.ref = ref
        self.timeout_s = timeout_s
        self.dropped = 0

    async def _try(self, what: str, event: TrainEvent | None, fields: str | None) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                if event is not None:
                    await self.publisher.publish(event, best_effort=True)
                if fields is not None:
                    await self.redis.hset(
                        status_key(self.ref.request_id),
                        mapping={"progress": fields, "updated_at": now_iso()},
                    )
        except (RedisError, TimeoutError) as exc:
            self.dropped += 1
            log.warning(
                "progress_dropped",
                request_id=self.ref.request_id,
                what=what,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def progress(self, message: Progress) -> None:
        event = progress_event(self.ref, message, now_iso())
        fields = progress_fields(message)
        await self._try(event.type, event, json.dumps(fields) if fields is not None else None)

    async def artifact(self, run_id: str, path: str) -> None:
        event = TrainArtifact(
            request_id=self.ref.request_id,
            user_id=self.ref.user_id,
            model_id=self.ref.model_id,
            run_id=run_id,
            ts=now_iso(),
            path=path,
        )
        await self._try(event.type, event, None)
