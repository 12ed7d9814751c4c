"""Progress: the reporter protocol the loop talks to, its messages, and the maths behind them."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from attrs import asdict, frozen

from handwriting_ai.logging import get_logger


@frozen
class BatchProgress:
    epoch: int
    total_epochs: int
    batch: int
    total_batches: int
    batch_loss: float
    batch_acc: float
    avg_loss: float
    samples_per_sec: float


@frozen
class EpochProgress:
    epoch: int
    total_epochs: int
    train_loss: float
    val_acc: float
    time_s: float


@frozen
class BestProgress:
    epoch: int
    val_acc: float


class ProgressReporter(Protocol):
    def on_batch(self, progress: BatchProgress) -> None: ...
    def on_epoch(self, progress: EpochProgress) -> None: ...
    def on_best(self, progress: BestProgress) -> None: ...


def should_report_batch(batch: int, total_batches: int, every: int) -> bool:
    """Every `every` batches and always the last one; `every=0` disables batch progress."""
    return every > 0 and (batch % every == 0 or batch == total_batches)


def overall_fraction(epoch: int, total_epochs: int, batch: int, total_batches: int) -> float:
    if total_epochs <= 0 or total_batches <= 0:
        return 0.0
    return min(1.0, ((epoch - 1) + batch / total_batches) / total_epochs)


def progress_bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


class NullReporter:
    def on_batch(self, progress: BatchProgress) -> None:
        pass

    def on_epoch(self, progress: EpochProgress) -> None:
        pass

    def on_best(self, progress: BestProgress) -> None:
        pass


class LoggingReporter:
    def __init__(self) -> None:
        self.log = get_logger("handwriting_ai.training")

    def on_batch(self, progress: BatchProgress) -> None:
        self.log.debug("train_batch", **_fields(progress))

    def on_epoch(self, progress: EpochProgress) -> None:
        self.log.info("train_epoch", **_fields(progress))

    def on_best(self, progress: BestProgress) -> None:
        self.log.info("train_best", **_fields(progress))


class TerminalReporter:
    """One bar redrawn in place, one line per epoch: for people running `digits train`."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream

    def on_batch(self, progress: BatchProgress) -> None:
        frac = overall_fraction(
            progress.epoch, progress.total_epochs, progress.batch, progress.total_batches
        )
        epoch = f"epoch {progress.epoch}/{progress.total_epochs}"
        self.stream.write(
            f"\r{progress_bar(frac)} {frac * 100:5.1f}%  {epoch}"
            f"  batch {progress.batch}/{progress.total_batches}  loss {progress.avg_loss:.4f}"
            f"  {progress.samples_per_sec:,.0f} samples/s"
        )
        self.stream.flush()

    def on_epoch(self, progress: EpochProgress) -> None:
        epoch = f"epoch {progress.epoch}/{progress.total_epochs}"
        self.stream.write(
            f"\r{epoch}: train_loss {progress.train_loss:.4f}"
            f"  val_acc {progress.val_acc:.4f}  {progress.time_s:.1f} s{' ' * 30}\n"
        )

    def on_best(self, progress: BestProgress) -> None:
        self.stream.write(f"  new best: val_acc {progress.val_acc:.4f} at epoch {progress.epoch}\n")


def _fields(progress: BatchProgress | EpochProgress | BestProgress) -> dict[str, float | int]:
    return {k: v for k, v in asdict(progress).items() if isinstance(v, int | float)}
