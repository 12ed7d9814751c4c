"""The worker's pure delivery policies and transitions with plain values, and the Redis side of
them against real Redis 6.2 and 7.x: lease-based reclaim (a live owner keeps its entry however
idle it looks), the fenced commit (a worker that lost its entry writes nothing), and trimming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis.asyncio import Redis

from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    job_events_key,
    status_key,
    worker_lease_key,
)
from handwriting_ai.worker import group, lifecycle
from handwriting_ai.worker.commit import Committed, commit_once
from handwriting_ai.worker.delivery import (
    SuspectTracker,
    over_crash_cap,
    retry_decision,
    torch_threads,
    trim_point,
)
from handwriting_ai.worker.lifecycle import JobRef, Limits
from redis_server import find_binary, running_redis, system_binary

BINARIES = {"default": find_binary(), "system": system_binary()}
LIMITS = Limits(result_ttl_s=100, failure_ttl_s=200, events_maxlen=1000)
NOW = "2026-01-01T00:00:00.000Z"


def test_retry_decision_counts_failures_then_gives_up() -> None:
    intervals = (60.0, 300.0)
    assert retry_decision(1, retry_max=2, intervals_s=intervals).delay_s == 60.0
    assert retry_decision(2, retry_max=2, intervals_s=intervals).delay_s == 300.0
    assert not retry_decision(3, retry_max=2, intervals_s=intervals).will_retry
    assert retry_decision(3, retry_max=5, intervals_s=intervals).delay_s == 300.0  # last repeats
    assert not retry_decision(1, retry_max=0, intervals_s=intervals).will_retry
    assert retry_decision(1, retry_max=1, intervals_s=()).delay_s == 0.0


def test_crash_cap_and_trim_point() -> None:
    assert not over_crash_cap(4, 5)
    assert over_crash_cap(5, 5)
    assert not over_crash_cap(100, 0)  # 0 turns the cap off
    assert trim_point(None, "0-0") is None
    assert trim_point(None, "20-1") == "20-1"
    assert trim_point("9-5", "20-1") == "9-5"
    assert trim_point("100-0", "20-1") == "20-1"
    assert trim_point("9-10", "9-9") == "9-9"  # ids compare as numbers, not strings
    assert torch_threads(8, 3) == 2
    assert torch_threads(1, 4) == 1


def test_suspects_are_confirmed_only_after_a_whole_window() -> None:
    tracker = SuspectTracker()
    tracker.observe([("1-0", "a"), ("2-0", "b")], now=100.0)
    assert tracker.confirmed(105.0, window_s=10.0) == []
    tracker.observe([("1-0", "a"), ("2-0", "c")], now=108.0)  # 2-0 changed hands: starts over
    assert tracker.confirmed(110.0, window_s=10.0) == [("1-0", "a")]
    tracker.observe([("2-0", "c")], now=111.0)  # 1-0's owner came back: forgotten
    assert tracker.confirmed(130.0, window_s=10.0) == [("2-0", "c")]
    tracker.reset()  # a failed or stalled observation: we saw nothing
    tracker.observe([("2-0", "c")], now=131.0)
    assert tracker.confirmed(135.0, window_s=10.0) == []


def test_entry_ids_of_hostile_entries() -> None:
    assert lifecycle.entry_ids({"user_id": "²", "model_id": "m/../x"}, "5-0") == ("job-5-0", 0, "")
    assert lifecycle.entry_ids({"user_id": "9" * 30}, "5-0")[1] == 0
    # A malformed entry never writes into the status of a job that owns its request_id.
    assert lifecycle.entry_ids({"request_id": "r1", "user_id": "7"}, "5-0") == ("job-5-0", 7, "")


def test_every_ending_acks_and_lets_the_lock_go() -> None:
    ref = JobRef("r1", 7, "mnist_digitnet_v1", "5-0", "w1")
    endings = [
        lifecycle.cancelled(ref, attempt=1, limits=LIMITS, now=NOW),
        lifecycle.dead(
            ref,
            {"model_id": "x"},
            kind="user",
            reason="bad",
            status="failed",
            attempt=1,
            deliveries=1,
            limits=LIMITS,
            now=NOW,
        ),
        lifecycle.retried(
            ref,
            {"request_id": "r1", "model_id": "mnist_digitnet_v1"},
            message="boom",
            attempt=1,
            failures=1,
            due_ms=5,
            retry_at=NOW,
            limits=LIMITS,
            now=NOW,
        ),
    ]
    for transition in endings:
        names = [command[0] for command in transition.commands]
        assert names[-1] == "XACK", transition.name
        assert lifecycle.DEL_IF_EQUAL in names, transition.name
        assert [e.type for e in transition.events][-1] == "digits.train.failed.v1"
    assert lifecycle.skipped(ref).commands == (("XACK", JOBS_STREAM, JOBS_GROUP, "5-0"),)
    assert "XACK" not in [c[0] for c in lifecycle.released(ref, now=NOW).commands]


@pytest.mark.parametrize("which", ["default", "system"])
async def test_reclaim_needs_an_idle_entry_and_a_lost_lease(tmp_path: Path, which: str) -> None:
    binary = BINARIES[which]
    if binary is None:
        pytest.skip("no system redis-server")
    with running_redis(tmp_path, binary=binary) as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        await group.ensure_group(redis)
        await group.ensure_group(redis)  # BUSYGROUP is tolerated
        ids = [str(await redis.xadd(JOBS_STREAM, {"model_id": f"m{i}"})) for i in range(3)]
        await group.read_new(redis, "alive", count=1, block_ms=1)
        await group.read_new(redis, "dead", count=2, block_ms=1)
        mine, held = await group.heartbeat(redis, "alive", [ids[0]], lease_ms=60_000)
        assert (mine, held) == ({ids[0]}, {ids[0]})
        # However idle, the live owner's entry is no suspect and cannot be claimed.
        found = await group.suspects(redis, "thief")
        assert sorted(found) == [(ids[1], "dead"), (ids[2], "dead")]
        assert await group.claim(redis, "thief", ids[0], owner="alive", min_idle_ms=0) is None
        # The dead owner's entry: only once idle past the claim time.
        assert await group.claim(redis, "thief", ids[1], owner="dead", min_idle_ms=60_000) is None
        claimed = await group.claim(redis, "thief", ids[1], owner="dead", min_idle_ms=0)
        assert claimed == (ids[1], {"model_id": "m1"})
        # A claim that lost the race (owner changed meanwhile) takes nothing.
        assert await group.claim(redis, "other", ids[1], owner="dead", min_idle_ms=0) is None
        # A pending entry deleted from the stream is acked, never returned (6.2 and 7.x).
        await redis.xdel(JOBS_STREAM, ids[2])
        assert await group.claim(redis, "thief", ids[2], owner="dead", min_idle_ms=0) is None
        pending = await redis.xpending(JOBS_STREAM, JOBS_GROUP)
        assert pending["pending"] == 2
        # A lease that expires makes the owner a suspect; a dropped lease at once.
        await group.drop_lease(redis, "alive")
        assert not await redis.exists(worker_lease_key("alive"))
        assert (ids[0], "alive") in await group.suspects(redis, "thief")
        # Trim keeps every pending entry.
        await redis.xack(JOBS_STREAM, JOBS_GROUP, ids[0])
        assert await group.trim(redis) == ids[1]
        assert [e for e, _ in await redis.xrange(JOBS_STREAM) or []] == [ids[1]]
        await redis.aclose()


def _malformed(ref: JobRef) -> lifecycle.Transition:
    return lifecycle.dead(
        ref,
        {"model_id": "nosucharch", "user_id": "²"},
        kind="user",
        reason="bad @ $.model_id",
        status="failed",
        attempt=1,
        deliveries=1,
        limits=LIMITS,
        now=NOW,
    )


@pytest.mark.parametrize("which", ["default", "system"])
async def test_commit_is_fenced_and_atomic(tmp_path: Path, which: str) -> None:
    binary = BINARIES[which]
    if binary is None:
        pytest.skip("no system redis-server")
    with running_redis(tmp_path, binary=binary) as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        await group.ensure_group(redis)
        entry_id = str(await redis.xadd(JOBS_STREAM, {"model_id": "nosucharch", "user_id": "²"}))
        await group.read_new(redis, "old-owner", count=1, block_ms=1)
        ref = JobRef("job-" + entry_id, 0, "", entry_id, "old-owner")
        dead = _malformed(ref)
        # Another worker took the entry: the old owner's whole ending is refused, nothing lands.
        await redis.xclaim(JOBS_STREAM, JOBS_GROUP, "new-owner", 0, [entry_id])
        lost = await commit_once(redis, dead, entry_id=entry_id, consumer="old-owner")
        assert lost is Committed.LOST
        assert await redis.xlen(DEAD_STREAM) == 0
        assert await redis.exists(status_key(ref.request_id), EVENTS_STREAM) == 0
        # The owner's ending lands whole: event, dead letter, final status, ack.
        dead = _malformed(JobRef(ref.request_id, 0, "", entry_id, "new-owner"))
        written = await commit_once(redis, dead, entry_id=entry_id, consumer="new-owner")
        assert written is Committed.WRITTEN
        assert (await redis.xpending(JOBS_STREAM, JOBS_GROUP))["pending"] == 0
        assert await redis.hget(status_key(ref.request_id), "status") == "failed"
        rows = await redis.xrange(DEAD_STREAM) or []
        letter = rows[0][1] or {}
        assert json.loads(letter["entry_fields"]) == {"model_id": "nosucharch", "user_id": "²"}
        assert await redis.xlen(job_events_key(ref.request_id)) == 1
        assert 0 < await redis.ttl(status_key(ref.request_id)) <= 200
        # Asked again (an answer lost in an outage): the entry has ended, nothing is repeated.
        again = await commit_once(redis, dead, entry_id=entry_id, consumer="new-owner")
        assert again is Committed.ALREADY_ENDED
        assert await redis.xlen(DEAD_STREAM) == 1
        await redis.aclose()


@pytest.mark.parametrize("which", ["default", "system"])
async def test_undelivered_entries_are_seen_so_a_burst_worker_does_not_stop(
    tmp_path: Path, which: str
) -> None:
    binary = BINARIES[which]
    if binary is None:
        pytest.skip("no system redis-server")
    with running_redis(tmp_path, binary=binary) as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        await group.ensure_group(redis)
        assert not await group.has_undelivered(redis)
        await redis.xadd(JOBS_STREAM, {"model_id": "a"})
        await redis.xadd(JOBS_STREAM, {"model_id": "b"})
        assert await group.has_undelivered(redis)
        await group.read_new(redis, "w1", count=1, block_ms=1)
        assert await group.has_undelivered(redis)  # one handed out, one still new
        await group.read_new(redis, "w1", count=1, block_ms=1)
        assert not await group.has_undelivered(redis)  # pending is not "new"
        await redis.aclose()
