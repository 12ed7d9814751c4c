"""The text of a job's progress message, folded from its `digits.train.*.v1` events. Pure.

`apply(view, event) -> view` is a fold over frozen state; `render(view) -> str` is the message.
The fold is monotone: an event already reflected (the follower re-reads the job's own stream on a
restart, and may see an event twice) or older than what the view shows changes nothing, so
applying a history twice renders the same as applying it once. The text always fits Discord's
2,000 characters: the oldest epoch lines are folded into one line when there are too many.
"""

from __future__ import annotations

from typing import Literal

from attrs import evolve, frozen

from handwriting_ai.contracts.events import (
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
from handwriting_ai.training.progress import overall_fraction, progress_bar
from handwriting_ai.worker.lifecycle import CANCELLED_MESSAGE

MAX_CHARS = 2000  # Discord's limit on a message's content
MAX_MESSAGE_CHARS = 300  # a failure's message, cut: the rest is in the worker's logs

Outcome = Literal["completed", "failed", "cancelled"]


@frozen
class BatchLine:
    epoch: int
    total_epochs: int
    batch: int
    total_batches: int
    avg_loss: float
    batch_acc: float
    samples_per_sec: float


@frozen
class EpochLine:
    epoch: int
    total_epochs: int
    train_loss: float
    val_acc: float
    time_s: float


@frozen
class Final:
    outcome: Outcome
    val_acc: float | None = None
    test_acc: float | None = None
    version: str | None = None
    error_kind: str = ""
    message: str = ""


@frozen
class ProgressView:
    """Everything the message shows; `ProgressView(request_id, model_id)` before any event."""

    request_id: str
    model_id: str
    total_epochs: int | None = None
    attempt: int = 0  # 0: no worker has started the job yet
    batch: BatchLine | None = None
    epochs: tuple[EpochLine, ...] = ()
    best: tuple[int, float] | None = None  # (epoch, val_acc)
    uploaded: tuple[int, int] | None = None  # (HTTP status, model bytes)
    pruned: int | None = None
    retry_note: str = ""  # the last failure that will be retried
    final: Final | None = None


def _position(view: ProgressView) -> tuple[int, int]:
    return (view.batch.epoch, view.batch.batch) if view.batch is not None else (0, 0)


def _with_epoch(epochs: tuple[EpochLine, ...], line: EpochLine) -> tuple[EpochLine, ...]:
    kept = [e for e in epochs if e.epoch != line.epoch]
    return tuple(sorted([*kept, line], key=lambda e: e.epoch))


def _failed(view: ProgressView, event: TrainFailed) -> ProgressView:
    if event.attempt < view.attempt:
        return view  # an earlier attempt's failure, seen again
    message = event.message[:MAX_MESSAGE_CHARS]
    if event.will_retry:
        note = f"attempt {event.attempt} failed ({event.error_kind}): {message}; retrying"
        return evolve(view, attempt=event.attempt, retry_note=note)
    # `cancelled` is the field; the message is how workers from before it said so.
    cancelled = event.cancelled or (
        event.error_kind == "user" and event.message == CANCELLED_MESSAGE
    )
    outcome: Outcome = "cancelled" if cancelled else "failed"
    return evolve(view, final=Final(outcome, error_kind=event.error_kind, message=message))


def _started(view: ProgressView, event: TrainStarted) -> ProgressView:
    if event.attempt < view.attempt:
        return view
    if event.attempt > view.attempt and view.attempt > 0:
        # A retry trains from scratch: the earlier attempt's progress no longer describes it.
        view = ProgressView(view.request_id, view.model_id, retry_note=view.retry_note)
    return evolve(
        view, model_id=event.model_id, total_epochs=event.total_epochs, attempt=event.attempt
    )


def _batch(view: ProgressView, event: TrainBatch) -> ProgressView:
    if (event.epoch, event.batch) <= _position(view):
        return view
    line = BatchLine(
        event.epoch,
        event.total_epochs,
        event.batch,
        event.total_batches,
        event.avg_loss,
        event.batch_acc,
        event.samples_per_sec,
    )
    return evolve(view, batch=line, total_epochs=event.total_epochs)


def _epoch(view: ProgressView, event: TrainEpoch) -> ProgressView:
    line = EpochLine(event.epoch, event.total_epochs, event.train_loss, event.val_acc, event.time_s)
    return evolve(view, epochs=_with_epoch(view.epochs, line))


def _best(view: ProgressView, event: TrainBest) -> ProgressView:
    if view.best is not None and view.best[0] > event.epoch:
        return view
    return evolve(view, best=(event.epoch, event.val_acc))


def apply(view: ProgressView, event: TrainEvent) -> ProgressView:
    """The view after `event`; unchanged for events of other jobs, stale ones and after the end.
    `digits.train.artifact.v1` shows nothing: a path on the worker's machine means nothing here."""
    if event.request_id != view.request_id or view.final is not None:
        return view
    if isinstance(event, TrainStarted):
        return _started(view, event)
    if isinstance(event, TrainBatch):
        return _batch(view, event)
    if isinstance(event, TrainEpoch):
        return _epoch(view, event)
    if isinstance(event, TrainBest):
        return _best(view, event)
    if isinstance(event, TrainUpload):
        return evolve(view, uploaded=(event.status, event.model_bytes))
    if isinstance(event, TrainPrune):
        return evolve(view, pruned=event.deleted_count)
    if isinstance(event, TrainCompleted):
        return evolve(view, final=Final("completed", event.val_acc, event.test_acc, event.version))
    if isinstance(event, TrainFailed):
        return _failed(view, event)
    return view


def fold(view: ProgressView, events: list[TrainEvent]) -> ProgressView:
    for event in events:
        view = apply(view, event)
    return view


# ----------------------------------------------------------------------------------- render


def _size(n_bytes: int) -> str:
    if n_bytes >= 1_000_000:
        return f"{n_bytes / 1_000_000:.1f} MB"
    if n_bytes >= 1_000:
        return f"{n_bytes / 1_000:.0f} kB"
    return f"{n_bytes} B"


def _bar_lines(view: ProgressView) -> list[str]:
    if view.final is not None and view.final.outcome == "completed":
        return [f"`{progress_bar(1.0)}` 100.0%"]
    b = view.batch
    if b is None:
        if view.attempt == 0:
            return ["Queued: waiting for a worker."]
        epochs = f", {view.total_epochs} epochs" if view.total_epochs else ""
        return [f"`{progress_bar(0.0)}`   0.0%  started (attempt {view.attempt}{epochs})"]
    frac = overall_fraction(b.epoch, b.total_epochs, b.batch, b.total_batches)
    return [
        f"`{progress_bar(frac)}` {frac * 100:5.1f}%  epoch {b.epoch}/{b.total_epochs}"
        f" · batch {b.batch}/{b.total_batches}",
        f"loss {b.avg_loss:.4f} · batch acc {b.batch_acc * 100:.1f}%"
        f" · {b.samples_per_sec:,.0f} samples/s",
    ]


def _epoch_line(line: EpochLine, best_epoch: int | None) -> str:
    text = (
        f"epoch {line.epoch}/{line.total_epochs}: train_loss {line.train_loss:.4f}"
        f" · val_acc {line.val_acc:.4f} · {line.time_s:.1f} s"
    )
    return f"**{text} ⭐ new best**" if line.epoch == best_epoch else text


def _tail_lines(view: ProgressView) -> list[str]:
    lines: list[str] = []
    if view.uploaded is not None:
        status, model_bytes = view.uploaded
        lines.append(f"📦 uploaded to the API (HTTP {status}, model {_size(model_bytes)})")
    if view.pruned:  # nothing to say when no old run was deleted
        runs = "run" if view.pruned == 1 else "runs"
        lines.append(f"🧹 pruned {view.pruned} old {runs}")
    if view.retry_note and view.final is None:
        lines.append(f"↻ {view.retry_note}")
    final = view.final
    if final is None:
        return lines
    if final.outcome == "completed":
        test = f" · test_acc {final.test_acc:.4f}" if final.test_acc is not None else ""
        version = f" · version `{final.version}`" if final.version else ""
        acc = f"val_acc {final.val_acc:.4f}" if final.val_acc is not None else "done"
        lines.append(f"✅ **Completed**: {acc}{test}{version}")
    elif final.outcome == "cancelled":
        lines.append("⏹️ **Cancelled** by request.")
    else:
        lines.append(f"❌ **Failed** ({final.error_kind}): {final.message}")
    return lines


def render(view: ProgressView, *, max_chars: int = MAX_CHARS) -> str:
    """The message text; at most `max_chars`, however many epochs the job has."""
    head = [f"**Training `{view.model_id}`** · request `{view.request_id}`", *_bar_lines(view)]
    best_epoch = view.best[0] if view.best is not None else None
    epoch_lines = [_epoch_line(e, best_epoch) for e in view.epochs]
    tail = _tail_lines(view)
    if view.best is not None and best_epoch not in {e.epoch for e in view.epochs}:
        tail.insert(0, f"⭐ best: val_acc {view.best[1]:.4f} at epoch {view.best[0]}")
    hidden = 0
    while True:
        folded = [f"… {hidden} earlier epochs" + _best_of_hidden(view, hidden)] if hidden else []
        text = "\n".join([*head, *folded, *epoch_lines[hidden:], *tail])
        if len(text) <= max_chars or hidden == len(epoch_lines):
            return text[:max_chars]
        # Fold at once as many of the oldest lines as the excess needs (then one more per pass,
        # the fold line itself being a few characters longer).
        excess, cut = len(text) - max_chars, hidden
        while cut < len(epoch_lines) and excess > 0:
            excess -= len(epoch_lines[cut]) + 1
            cut += 1
        hidden = max(hidden + 1, cut)


def _best_of_hidden(view: ProgressView, hidden: int) -> str:
    """The best epoch stays visible when its line is folded away."""
    if view.best is None:
        return ""
    epoch, val_acc = view.best
    if any(e.epoch == epoch for e in view.epochs[:hidden]):
        return f" (⭐ best: val_acc {val_acc:.4f} at epoch {epoch})"
    return ""
