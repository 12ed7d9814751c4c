"""The progress message's text, folded from real `digits.train.*.v1` events: bar and batch stats,
epochs, the best, upload and prune, completed / failed / cancelled, retries and the length cap."""

from __future__ import annotations

from typing import Literal, TypedDict

from handwriting_ai.bot.progress import MAX_CHARS, ProgressView, apply, fold, render
from handwriting_ai.contracts.events import (
    TrainArtifact,
    TrainBatch,
    TrainBest,
    TrainCompleted,
    TrainEpoch,
    TrainEvent,
    TrainFailed,
    TrainPrune,
    TrainStarted,
    TrainUpload,
)
from handwriting_ai.worker.lifecycle import CANCELLED_MESSAGE

RID, MODEL, TS = "req-1", "mnist_digitnet_v1", "2025-01-02T00:00:00.000Z"


class Base(TypedDict):
    request_id: str
    user_id: int
    model_id: str
    ts: str


BASE = Base(request_id=RID, user_id=7, model_id=MODEL, ts=TS)


def started(total_epochs: int = 2, attempt: int = 1) -> TrainStarted:
    return TrainStarted(**BASE, total_epochs=total_epochs, attempt=attempt)


def batch(epoch: int, number: int, total_epochs: int = 2) -> TrainBatch:
    return TrainBatch(
        **BASE,
        epoch=epoch,
        total_epochs=total_epochs,
        batch=number,
        total_batches=4,
        batch_loss=0.5,
        batch_acc=0.875,
        avg_loss=0.6,
        samples_per_sec=1234.0,
    )


def epoch(number: int, val_acc: float, total_epochs: int = 2) -> TrainEpoch:
    return TrainEpoch(
        **BASE,
        epoch=number,
        total_epochs=total_epochs,
        train_loss=0.25,
        val_acc=val_acc,
        time_s=1.5,
    )


def best(number: int, val_acc: float) -> TrainBest:
    return TrainBest(**BASE, epoch=number, val_acc=val_acc)


def failed(
    message: str, *, kind: str = "system", retry: bool = False, attempt: int = 1
) -> TrainFailed:
    error_kind: Literal["user", "system"] = "user" if kind == "user" else "system"
    return TrainFailed(
        **BASE, error_kind=error_kind, message=message, will_retry=retry, attempt=attempt
    )


def a_job() -> list[TrainEvent]:
    return [
        started(),
        batch(1, 2),
        batch(1, 4),
        epoch(1, 0.9512),
        best(1, 0.9512),
        batch(2, 2),
        batch(2, 4),
        epoch(2, 0.9634),
        best(2, 0.9634),
        TrainArtifact(**BASE, path="/data/artifacts/x"),
        TrainUpload(**BASE, status=200, model_bytes=1_234_567, manifest_bytes=900),
        TrainPrune(**BASE, deleted_count=2),
        TrainCompleted(**BASE, val_acc=0.9634, test_acc=0.9601, version="20250102T000000Z"),
    ]


def view() -> ProgressView:
    return ProgressView(RID, MODEL)


def test_before_any_event_the_job_is_queued() -> None:
    assert render(view()) == (
        "**Training `mnist_digitnet_v1`** · request `req-1`\nQueued: waiting for a worker."
    )


def test_batches_draw_the_bar_and_the_stats() -> None:
    text = render(fold(view(), [started(), batch(1, 2)]))
    assert text.splitlines()[1:] == [
        "`██████░░░░░░░░░░░░░░░░░░`  25.0%  epoch 1/2 · batch 2/4",
        "loss 0.6000 · batch acc 87.5% · 1,234 samples/s",
    ]
    started_only = render(fold(view(), [started()]))
    assert started_only.splitlines()[1].endswith("0.0%  started (attempt 1, 2 epochs)")


def test_epochs_are_summarised_and_the_new_best_highlighted() -> None:
    e1 = "epoch 1/2: train_loss 0.2500 · val_acc 0.9512 · 1.5 s"
    e2 = "epoch 2/2: train_loss 0.2500 · val_acc 0.9634 · 1.5 s"
    lines = render(fold(view(), a_job()[:4])).splitlines()  # epoch 1 ended, no best yet
    assert lines[-1] == e1
    lines = render(fold(view(), a_job()[:8])).splitlines()  # epoch 1 was best, epoch 2 ended
    assert lines[-2:] == [f"**{e1} ⭐ new best**", e2]
    lines = render(fold(view(), a_job()[:9])).splitlines()  # epoch 2 is the new best
    assert lines[-2:] == [e1, f"**{e2} ⭐ new best**"]


def test_completed_job_reads_final_with_upload_and_prune() -> None:
    text = render(fold(view(), a_job()))
    assert text.splitlines() == [
        "**Training `mnist_digitnet_v1`** · request `req-1`",
        "`████████████████████████` 100.0%",
        "epoch 1/2: train_loss 0.2500 · val_acc 0.9512 · 1.5 s",
        "**epoch 2/2: train_loss 0.2500 · val_acc 0.9634 · 1.5 s ⭐ new best**",
        "📦 uploaded to the API (HTTP 200, model 1.2 MB)",
        "🧹 pruned 2 old runs",
        "✅ **Completed**: val_acc 0.9634 · test_acc 0.9601 · version `20250102T000000Z`",
    ]
    assert fold(view(), a_job()).final is not None


def test_failed_job_shows_kind_and_message_and_nothing_after() -> None:
    done = fold(view(), [started(), batch(1, 2), failed("out of memory")])
    text = render(done)
    assert text.endswith("\n❌ **Failed** (system): out of memory")
    assert "25.0%" in text  # where it stopped
    assert apply(done, batch(1, 4)) == done  # final: nothing changes it


def test_cancelled_job_reads_as_cancelled() -> None:
    text = render(fold(view(), [started(), failed(CANCELLED_MESSAGE, kind="user")]))
    assert text.endswith("\n⏹️ **Cancelled** by request.")  # a worker from before `cancelled`
    assert "Failed" not in text
    flagged = TrainFailed(**BASE, error_kind="user", message="stopped", cancelled=True)
    assert render(fold(view(), [started(), flagged])).endswith("\n⏹️ **Cancelled** by request.")
    # A user failure that is not a cancellation is a failure.
    other = render(fold(view(), [started(), failed("unknown arch", kind="user")]))
    assert other.endswith("❌ **Failed** (user): unknown arch")


def test_a_retried_attempt_starts_over_and_says_why() -> None:
    events: list[TrainEvent] = [
        started(),
        batch(1, 4),
        epoch(1, 0.9),
        failed("timeout", retry=True),
    ]
    waiting = fold(view(), events)
    assert waiting.final is None
    assert render(waiting).endswith("↻ attempt 1 failed (system): timeout; retrying")
    again = fold(waiting, [started(attempt=2), batch(1, 2)])
    text = render(again)
    assert "epoch 1/2: train_loss" not in text  # the first attempt's epoch is gone
    assert "25.0%  epoch 1/2 · batch 2/4" in text
    # The first attempt's failure, seen again, changes nothing.
    assert apply(again, failed("timeout", retry=True)) == again


def test_events_seen_twice_or_of_other_jobs_change_nothing() -> None:
    once = fold(view(), a_job()[:8])
    assert fold(once, a_job()[:8]) == once  # a restart re-reads the job's own stream
    assert render(fold(view(), a_job() + a_job())) == render(fold(view(), a_job()))
    stale = apply(once, batch(1, 2))
    assert stale == once  # older than what is shown
    other_job = Base(request_id="req-2", user_id=7, model_id=MODEL, ts=TS)
    assert apply(once, TrainStarted(**other_job, total_epochs=9, attempt=3)) == once


def test_many_epochs_stay_within_discords_limit_and_keep_the_best() -> None:
    total = 500
    events: list[TrainEvent] = [started(total)]
    for n in range(1, total + 1):
        events.append(epoch(n, 0.5 + n / 10_000, total))
        if n == 3:
            events.append(best(3, 0.5003))
    events.append(TrainCompleted(**BASE, val_acc=0.55, version="v9"))
    text = render(fold(view(), events))
    assert len(text) <= MAX_CHARS
    lines = text.splitlines()
    folded = [line for line in lines if line.startswith("… ")]
    assert len(folded) == 1
    hidden = int(folded[0].split()[1])
    assert folded[0] == f"… {hidden} earlier epochs (⭐ best: val_acc 0.5003 at epoch 3)"
    assert lines[-1] == "✅ **Completed**: val_acc 0.5500 · version `v9`"
    assert lines[-2].startswith(f"epoch {total}/{total}:")  # the newest epochs are shown
    shown = [line for line in lines if line.startswith("epoch ")]
    assert hidden + len(shown) == total
    # As many as fit: one more line would not.
    assert len(text) + len(shown[0]) + 1 > MAX_CHARS
    # A long failure message is cut, and the whole still fits.
    long_fail = render(fold(view(), [*events[:-1], failed("x" * 5000)]))
    assert len(long_fail) <= MAX_CHARS
    assert long_fail.endswith("❌ **Failed** (system): " + "x" * 300)
