"""What `/read` and `/train` do, without discord types: the chat layer hands in plain values and
sends the `Reply` it gets back.

`/read` refuses an image the service would refuse before uploading it: its declared type and
size first (no download), then its dimensions from the header bytes (Pillow reads the size
without decoding pixels), with the service's own limits (`DIGITS__MAX_IMAGE_*`). `/train` queues
the seeds' default job under a per-user rate limit (`BOT__TRAIN_PER_USER` per
`BOT__TRAIN_WINDOW_S`), then the chat layer posts the progress message and `track`s it.
A successful reading carries its correction target: a pick under it is `correct` (see
`corrections.py`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

from attrs import frozen

from handwriting_ai.bot.corrections import Correctable, CorrectionOutcome, refused, saved
from handwriting_ai.bot.editor import MessageRef
from handwriting_ai.bot.follower import Follower
from handwriting_ai.bot.progress import ProgressView, render
from handwriting_ai.bot.ratelimit import RateLimiter
from handwriting_ai.bot.replies import error_reply, reading_reply
from handwriting_ai.client import AsyncClient, Reading, ServiceError
from handwriting_ai.contracts.jobs import TrainJob
from handwriting_ai.errors import AppError
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing.decode import ACCEPTED_CONTENT_TYPES, ImageLimits, open_checked

log = get_logger(__name__)

ACCEPTED_SUFFIXES = (".png", ".jpg", ".jpeg")
NOT_CONFIGURED = "Training is not configured."


@frozen
class Reply:
    text: str
    ephemeral: bool = False


class Attachment(Protocol):
    """What `/read` needs of an attachment (discord.py's `Attachment` has it)."""

    @property
    def filename(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def size(self) -> int: ...
    async def read(self) -> bytes: ...


@frozen
class TrainDefaults:
    """The seeds' `/train` job (no user arguments), with our compact model instead of ResNet."""

    model_id: str = "mnist_digitnet_v1"
    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.0015
    seed: int = 42
    augment: bool = True
    notes: str = "requested via /train"

    def job(self, request_id: str, user_id: int) -> TrainJob:
        return TrainJob(
            request_id=request_id,
            user_id=user_id,
            model_id=self.model_id,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            augment=self.augment,
            notes=self.notes,
        )


def _refusal(status: int, code: str, message: str) -> Reply:
    # The same sentence the service's own refusal would get.
    return Reply(error_reply(ServiceError(status, code, message, "")), ephemeral=True)


def precheck(
    filename: str, content_type: str | None, size: int, limits: ImageLimits
) -> Reply | None:
    """A refusal from the attachment's metadata alone (before downloading), or None."""
    declared = (content_type or "").split(";")[0].strip().lower()
    typed = declared in ACCEPTED_CONTENT_TYPES
    if not typed and not (not declared and filename.lower().endswith(ACCEPTED_SUFFIXES)):
        return _refusal(415, "unsupported_media_type", f"not PNG or JPEG: {declared or filename}")
    if size > limits.max_bytes:
        return _refusal(413, "too_large", f"{size} bytes")
    return None


def check_image(data: bytes, limits: ImageLimits) -> Reply | None:
    """A refusal from the bytes' format and header dimensions (no pixels decoded), or None."""
    try:
        open_checked(data, limits)[1].close()
    except AppError as exc:
        return _refusal(exc.status_code, exc.code, exc.message)
    return None


@frozen
class ReadOutcome:
    reply: Reply
    reading: Reading | None = None  # set when the service read a digit


@frozen
class TrainOutcome:
    reply: Reply
    request_id: str | None = None  # set when the job was queued
    model_id: str = ""


class Commands:
    def __init__(
        self,
        client: AsyncClient,
        *,
        limits: ImageLimits,
        limiter: RateLimiter,
        defaults: TrainDefaults = TrainDefaults(),
        follower: Follower | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.limits = limits
        self.limiter = limiter
        self.defaults = defaults
        self.follower = follower
        self.clock = clock

    def precheck_read(self, attachment: Attachment) -> Reply | None:
        return precheck(attachment.filename, attachment.content_type, attachment.size, self.limits)

    async def read(self, attachment: Attachment) -> ReadOutcome:
        """The reply to `/read` for an attachment that passed `precheck_read`."""
        data = await attachment.read()
        # Public from here on: the chat layer deferred the reply visibly.
        refusal = check_image(data, self.limits)
        if refusal is not None:
            return ReadOutcome(Reply(refusal.text))
        try:
            reading = await self.client.read(
                data,
                filename=attachment.filename,
                content_type=attachment.content_type,
                center=True,
            )
        except ServiceError as exc:
            log.info("bot_read_refused", code=exc.code, request_id=exc.request_id)
            return ReadOutcome(Reply(error_reply(exc)))
        return ReadOutcome(Reply(reading_reply(reading)), reading)

    async def correct(self, target: Correctable, user_id: int, label: int) -> CorrectionOutcome:
        """`user_id` says the reading `target` was a `label` (`POST /v1/feedback`)."""
        try:
            accepted = await self.client.feedback(target.request_id, label, user_id=user_id)
        except ServiceError as exc:
            log.info(
                "bot_correction_refused",
                code=exc.code,
                corrected_request_id=target.request_id,
                request_id=exc.request_id,
            )
            return refused(exc)
        log.info(
            "bot_corrected",
            corrected_request_id=target.request_id,
            label=label,
            predicted=accepted.predicted,
            entry_id=accepted.entry_id,
        )
        return saved(label)

    async def train(self, user_id: int) -> TrainOutcome:
        """Queue the default job for `user_id`, within the rate limit."""
        now = self.clock()
        wait_s = self.limiter.acquire(user_id, now)
        if wait_s is not None:
            limit, window = self.limiter.limit, _duration(self.limiter.window_s)
            text = (
                f"You can start {limit} training job{'s' if limit != 1 else ''} every {window}."
                f" Please try again in {_duration(wait_s)}."
            )
            return TrainOutcome(Reply(text, ephemeral=True))
        job = self.defaults.job(uuid.uuid4().hex, user_id)
        try:
            accepted = await self.client.train(job)
        except ServiceError as exc:
            self.limiter.release(user_id, now)
            log.info("bot_train_refused", code=exc.code, request_id=exc.request_id)
            return TrainOutcome(Reply(error_reply(exc), ephemeral=True))
        epochs = f"{job.epochs} epoch{'s' if job.epochs != 1 else ''}"
        follow = (
            "" if self.follower is not None else " (no progress messages: the bot has no Redis)"
        )
        text = (
            f"Training queued: `{job.model_id}`, {epochs}. Request id: `{accepted.request_id}`."
            f"{follow}"
        )
        return TrainOutcome(Reply(text, ephemeral=True), accepted.request_id, job.model_id)

    @staticmethod
    def progress_text(request_id: str, model_id: str) -> str:
        """The progress message before any event."""
        return render(ProgressView(request_id, model_id))

    async def track(self, request_id: str, model_id: str, ref: MessageRef) -> None:
        if self.follower is not None:
            await self.follower.track(request_id, ref, model_id)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds >= 120:
        return f"{round(seconds / 60)} minutes"
    whole = max(1, round(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"
