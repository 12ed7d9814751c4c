"""The worker's pure delivery policies with plain values, and the XAUTOCLAIM scan against real
Redis 6.2 and 7.x: the cursor is carried from call to call and restarts only after a full pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM
from handwriting_ai.worker import group
from handwriting_ai.worker.delivery import (
    ReclaimCursor,
    over_delivery_cap,
    retry_decision,
    torch_threads,
    trim_point,
)
from redis_server import find_binary, running_redis, system_binary

BINARIES = {"default": find_binary(), "system": system_binary()}


def test_retry_decision_backs_off_then_gives_up() -> None:
    intervals = (60.0, 300.0)
    assert retry_decision(1, retry_max=2, intervals_s=intervals).delay_s == 60.0
    assert retry_decision(2, retry_max=2, intervals_s=intervals).delay_s == 300.0
    assert not retry_decision(3, retry_max=2, intervals_s=intervals).will_retry
    assert retry_decision(3, retry_max=5, intervals_s=intervals).delay_s == 300.0  # last repeats
    assert not retry_decision(1, retry_max=0, intervals_s=intervals).will_retry
    assert retry_decision(1, retry_max=1, intervals_s=()).delay_s == 0.0


def test_poison_cap_and_trim_point() -> None:
    assert not over_delivery_cap(5, 5)
    assert over_delivery_cap(6, 5)
    assert not over_delivery_cap(100, 0)  # 0 turns the cap off
    assert trim_point(None, "0-0") is None
    assert trim_point(None, "20-1") == "20-1"
    assert trim_point("9-5", "20-1") == "9-5"
    assert trim_point("100-0", "20-1") == "20-1"
    assert trim_point("9-10", "9-9") == "9-9"  # ids compare as numbers, not strings
    assert torch_threads(8, 3) == 2
    assert torch_threads(1, 4) == 1


def test_reclaim_cursor_counts_passes() -> None:
    cursor = ReclaimCursor()
    cursor.advance("5-0")
    assert (cursor.cursor, cursor.passes) == ("5-0", 0)
    cursor.advance("0-0")
    assert (cursor.cursor, cursor.passes) == ("0-0", 1)


@pytest.mark.parametrize("which", ["default", "system"])
async def test_reclaim_scan_carries_its_cursor(tmp_path: Path, which: str) -> None:
    binary = BINARIES[which]
    if binary is None:
        pytest.skip("no system redis-server")
    with running_redis(tmp_path, binary=binary) as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        await group.ensure_group(redis)
        await group.ensure_group(redis)  # BUSYGROUP is tolerated
        ids = [str(await redis.xadd(JOBS_STREAM, {"model_id": f"m{i}"})) for i in range(5)]
        await group.read_new(redis, "dead-worker", count=5, block_ms=1)
        cursor = ReclaimCursor()
        seen: list[str] = []
        for _ in range(3):
            entries, _ = await group.reclaim(redis, "alive", cursor, min_idle_ms=0, count=2)
            seen += [entry_id for entry_id, _ in entries]
            if cursor.passes:
                break
        assert seen == ids  # in order, each once: the scan went on from where it stopped
        assert cursor.passes == 1
        assert await group.deliveries(redis, ids[0]) == 2
        # A pending entry deleted from the stream is acknowledged, never returned.
        await redis.xdel(JOBS_STREAM, ids[1])
        entries, nameless = await group.reclaim(redis, "third", cursor, min_idle_ms=0, count=10)
        if nameless:  # Redis 6.2 names no id: our own pending list is cleaned instead
            await group.ack_deleted_own(redis, "third", keep=set())
        assert [e for e, _ in entries] == [ids[0], *ids[2:]]
        pending = await redis.xpending(JOBS_STREAM, JOBS_GROUP)
        assert pending["pending"] == 4
        # Trim keeps every pending entry.
        await redis.xack(JOBS_STREAM, JOBS_GROUP, ids[0])
        point = await group.trim(redis)
        assert point == ids[2]
        assert [e for e, _ in await redis.xrange(JOBS_STREAM) or []] == ids[2:]
        await redis.aclose()
