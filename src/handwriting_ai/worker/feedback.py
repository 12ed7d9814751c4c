"""A `use_feedback` job's corrections: read from `digits:feedback`, written for its training child.

The worker (the parent, which holds Redis) reads the whole stream in chunks with XRANGE, skips
and logs malformed entries (a hostile entry never fails a job), keeps the newest correction of
each read, and writes them as one `.npz` (`training/feedback.py`) in its scratch folder
`<artifacts>/feedback/`; the child gets the path. The file is deleted once the child is done with
it; one left by a killed worker is deleted by a later job once it is older than any job can run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from redis.asyncio import Redis
from structlog.typing import FilteringBoundLogger

from handwriting_ai.contracts.feedback import Correction, fold_corrections
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import entries_of
from handwriting_ai.streams.keys import FEEDBACK_STREAM
from handwriting_ai.training.feedback import FeedbackSet, feedback_set, save_feedback

log = get_logger(__name__)
READ_CHUNK = 500  # entries per XRANGE (~1 KB each): the loop is never held for long
FEEDBACK_DIR = "feedback"


async def read_corrections(
    redis: Redis, *, chunk: int = READ_CHUNK, logger: FilteringBoundLogger = log
) -> FeedbackSet:
    """Every well-formed correction on the stream, the newest per request_id, oldest first."""
    latest: dict[str, Correction] = {}
    start, malformed = "-", 0
    while True:
        rows = entries_of(await redis.xrange(FEEDBACK_STREAM, start, "+", count=chunk))
        for entry_id, reasons in fold_corrections(latest, rows):
            logger.warning("feedback_malformed", feedback_entry=entry_id, reason="; ".join(reasons))
            malformed += 1
        if len(rows) < chunk:
            break
        start = f"({rows[-1][0]}"
    if malformed:
        logger.warning("feedback_skipped", malformed=malformed, kept=len(latest))
    kept = list(latest.values())
    return feedback_set(
        [c.pixels() for c in kept] or np.zeros((0, 28, 28), np.uint8),
        [c.label for c in kept],
        [c.request_id for c in kept],
    )


def prune_stale(folder: Path, *, older_than_s: float) -> int:
    """Delete files a killed worker left behind (a live job's file is never that old)."""
    if not folder.is_dir():
        return 0
    cutoff, removed = time.time() - older_than_s, 0
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another worker pruned it first
            continue
    return removed


async def write_corrections(
    redis: Redis,
    folder: Path,
    name: str,
    *,
    stale_after_s: float,
    logger: FilteringBoundLogger = log,
) -> tuple[Path, int] | None:
    """(the file for the child, how many corrections), or None when the stream has none: the
    job then trains on MNIST alone."""
    corrections = await read_corrections(redis, logger=logger)
    if not len(corrections):
        logger.info("feedback_none", stream=FEEDBACK_STREAM, detail="no corrections: MNIST only")
        return None
    path = folder / f"{name}.npz"
    await asyncio.to_thread(prune_stale, folder, older_than_s=stale_after_s)
    await asyncio.to_thread(save_feedback, path, corrections)
    logger.info("feedback_read", corrections=len(corrections), path=str(path))
    return path, len(corrections)
