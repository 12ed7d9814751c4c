"""What runs inside a training subprocess: warm up, then train one job per request on the Pipe.

The parent sends a `ChildJob`; the child answers with progress messages (the training reporter's
own `BatchProgress`/`EpochProgress`/`BestProgress`) and ends each job with `ChildDone` or
`ChildError`, every one wrapped in a `Tagged` with the job's token, so a message of an earlier run
can never be taken for the current job's. Messages are small picklable attrs classes; nothing here
touches Redis. The child dies with its worker (`PR_SET_PDEATHSIG`, and EOF on the pipe).
"""

from __future__ import annotations

import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from attrs import frozen

from handwriting_ai.training.progress import BatchProgress, BestProgress, EpochProgress


@frozen
class ChildReady:
    pid: int


@frozen
class ChildJob:
    token: str  # unique per run: every answer carries it
    request_id: str
    entry_id: str
    model_id: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    augment: bool
    notes: str
    threads: int
    data_root: str
    model_dir: str
    batch_every: int
    # A `use_feedback` job's corrections file (written by the worker); empty: none.
    feedback_path: str = ""
    feedback_holdout: float = 0.2
    feedback_repeat: int = 20


@frozen
class ChildDone:
    run_id: str
    version: str
    directory: str
    val_acc: float
    test_acc: float | None
    pruned_count: int
    feedback_acc: float | None = None
    feedback_holdout: int = 0  # corrections held back (their accuracy is feedback_acc)
    feedback_count: int = 0  # corrections trained on


@frozen
class ChildError:
    kind: Literal["user", "system", "cancelled"]
    message: str


Answer = BatchProgress | EpochProgress | BestProgress | ChildDone | ChildError


@frozen
class Tagged:
    """An answer to the job with this token."""

    token: str
    message: Answer


ChildMessage = ChildReady | Tagged
# The child's end of the Pipe sends messages and receives jobs (`None`: stop); the parent's is
# the mirror image.
if TYPE_CHECKING:  # typeshed's Connection is generic; the runtime class is not subscriptable
    ChildConn = Connection[ChildMessage, ChildJob | None]
    ParentConn = Connection[ChildJob | None, ChildMessage]


class PipeReporter:
    """The training reporter protocol, forwarding each message to the parent."""

    def __init__(self, conn: ChildConn, token: str) -> None:
        self.conn = conn
        self.token = token

    def on_batch(self, progress: BatchProgress) -> None:
        self.conn.send(Tagged(self.token, progress))

    def on_epoch(self, progress: EpochProgress) -> None:
        self.conn.send(Tagged(self.token, progress))

    def on_best(self, progress: BestProgress) -> None:
        self.conn.send(Tagged(self.token, progress))


def _train(job: ChildJob, conn: ChildConn, cancel: Event) -> ChildDone | ChildError:
    from handwriting_ai.data.mnist import DataMissingError
    from handwriting_ai.training.config import AugmentConfig, TrainConfig
    from handwriting_ai.training.loop import TrainingCancelledError
    from handwriting_ai.training.run import InvalidTrainConfigError, run_training

    cfg = TrainConfig(
        model_id=job.model_id,
        arch=job.arch,
        epochs=job.epochs,
        batch_size=job.batch_size,
        lr=job.lr,
        seed=job.seed,
        augment=job.augment,
        aug=AugmentConfig.robust() if job.augment else AugmentConfig(),
        notes=job.notes,
        threads=job.threads,
        request_id=job.request_id,
        entry_id=job.entry_id,
        feedback_path=job.feedback_path,
        feedback_holdout=job.feedback_holdout,
        feedback_repeat=job.feedback_repeat,
    )
    try:
        result = run_training(
            cfg,
            data_root=Path(job.data_root),
            model_dir=Path(job.model_dir),
            reporter=PipeReporter(conn, job.token),
            should_stop=cancel.is_set,
            batch_every=job.batch_every,
        )
    except TrainingCancelledError:
        return ChildError("cancelled", "cancelled by request")
    except (InvalidTrainConfigError, DataMissingError) as exc:
        return ChildError("user", str(exc))
    except Exception as exc:  # noqa: BLE001 - anything else is ours: reported, then retried
        return ChildError("system", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
    manifest = result.manifest
    return ChildDone(
        run_id=manifest.run_id or manifest.version,
        version=manifest.version,
        directory=str(result.directory),
        val_acc=manifest.val_acc,
        test_acc=manifest.test_acc,
        pruned_count=len(result.pruned),
        feedback_acc=manifest.feedback_acc,
        feedback_holdout=len(manifest.feedback_holdout),
        feedback_count=manifest.feedback_count,
    )


def die_with_parent() -> None:
    """SIGKILL this process when the worker that spawned it dies (Linux; elsewhere the pipe's
    EOF ends an idle child)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_main(
    conn: ChildConn, cancel: Event, log_level: str, log_format: str, fail_start: bool = False
) -> None:
    """Entry point of a spawned slot process: it starts unconfigured, so logging is set up
    again, and torch is imported before `ChildReady` so the first job pays no import.
    `fail_start` (fault injection only) makes it exit before it is ready."""
    import os

    die_with_parent()
    if fail_start:
        os._exit(3)
    from handwriting_ai.logging import configure_logging

    configure_logging(log_level, log_format)
    import torch

    import handwriting_ai.training.run  # noqa: F401 - warm the import before the first job

    torch.set_num_threads(1)
    conn.send(ChildReady(os.getpid()))
    while True:
        try:
            job: object = conn.recv()
        except EOFError:  # the parent is gone
            return
        if not isinstance(job, ChildJob):
            return  # `None` asks the child to stop
        cancel.clear()
        conn.send(Tagged(job.token, _train(job, conn, cancel)))
