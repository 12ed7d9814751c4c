"""The jobs a worker runs now, by entry id: what dispatch adds, the heartbeat refreshes (and cancels
when another worker took the entry), the intake skips, and a stop waits for."""

from __future__ import annotations

import asyncio

from attrs import define, field

from handwriting_ai.worker.job import JobRun, Outcome, Running


@define
class InFlight:
    running: dict[str, Running] = field(factory=dict)
    runs: dict[str, JobRun] = field(factory=dict)
    tasks: dict[str, asyncio.Task[Outcome]] = field(factory=dict)
    lost: set[str] = field(factory=set)  # entries another worker took: their runs were cancelled

    def ended(self, entry_id: str) -> bool:
        """The run wrote its ending: it no longer holds its entry, even while its slot restarts."""
        run = self.runs.get(entry_id)
        return run is not None and run.ended

    def remove(self, entry_id: str) -> None:
        self.running.pop(entry_id, None)
        self.runs.pop(entry_id, None)
        self.tasks.pop(entry_id, None)
        self.lost.discard(entry_id)
