"""The worker's own tally of job outcomes (arq's `j_complete=… j_failed=…`), for its `repr`, which
is the health key's value and the `worker_stopped` log line."""

from __future__ import annotations

from attrs import define

from handwriting_ai.worker.job import Outcome


@define
class JobCounts:
    complete: int = 0
    failed: int = 0  # failed, dead or cancelled: the job will not run again
    retried: int = 0
    skipped: int = 0

    def add(self, outcome: Outcome) -> None:
        if outcome == "completed":
            self.complete += 1
        elif outcome in ("failed", "dead", "cancelled"):
            self.failed += 1
        elif outcome == "retried":
            self.retried += 1
        elif outcome == "skipped":
            self.skipped += 1

    def summary(self) -> str:
        return (
            f"j_complete={self.complete} j_failed={self.failed} j_retried={self.retried}"
            f" j_skipped={self.skipped}"
        )
