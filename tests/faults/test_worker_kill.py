"""Workers die at the worst moments: SIGKILL during training, and self-inflicted SIGKILLs at the
test-only fault points `HANDWRITING_AI_CRASH_AT=after_train | after_upload | after_commit`
(after the child finished, after the upload was answered 201, after the final commit), and a
training slot that cannot be started again (`slot_restart`). The job
still ends exactly once with its own model; a dead worker's entry is taken by exactly one of
two idle workers racing for it. A job reclaimed in the middle of training is not trained to
the end a second time: once its rerun has started on the survivor it is cancelled there, which
shows that the survivor owns a live run (the reruns that complete are the fault-point ones)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from faults.harness import Job, Rig, WorkerProcess, enqueue, wait_for
from faults.invariants import assert_invariants, count, describe, settle, status, tail
from handwriting_ai.inference.store import list_versions
from handwriting_ai.streams.keys import status_key, worker_health_key

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(600)]


def _runner(rig: Rig, job: Job, workers: list[WorkerProcess]) -> WorkerProcess:
    name = status(rig.client, job.request_id).get("worker", "")
    found = [w for w in workers if w.consumer == name]
    assert found, f"the job runs on {name!r}, none of {[w.consumer for w in workers]}"
    return found[0]


def _training(rig: Rig, job: Job) -> None:
    wait_for(
        lambda: count(rig.client, job.request_id, "epoch") >= 1, timeout_s=180, what="training"
    )


# Far more than the time a test lets it run: the rerun is cancelled, never finished.
LONG_EPOCHS = 300


def _cancel_the_rerun(rig: Rig, job: Job, survivors: list[WorkerProcess]) -> None:
    """Wait for the reclaimed run's `started`, then ask for a cancellation as the API does for a
    running job; the job settles `cancelled` instead of training to the end again."""
    wait_for(
        lambda: count(rig.client, job.request_id, "started") >= 2,
        timeout_s=120,
        what="the reclaimed job to start again",
    )
    rig.client.hset(status_key(job.request_id), "cancel_requested", "1")
    settle(rig.client, [job], timeout_s=120, workers=survivors)
    final = status(rig.client, job.request_id)
    assert final["status"] == "cancelled", describe(rig.client, [job])
    assert final["worker"] in {w.consumer for w in survivors}
    # The cancelled run's slot goes back to its pool only after the ending is written; the
    # probes of the invariants must not race that. The health line shows it: `j_ongoing=0` once
    # the run is over and its slot is ready.
    wait_for(
        lambda: all(_idle(rig, w) for w in survivors),
        timeout_s=120,
        what="the survivors to be idle again",
    )


def _idle(rig: Rig, worker: WorkerProcess) -> bool:
    line = rig.client.get(worker_health_key(worker.consumer))
    return isinstance(line, bytes) and b" j_ongoing=0>" in line


def test_worker_sigkilled_during_training(rig: Rig) -> None:
    """The job is reclaimed by the other worker and runs again there (one injected failure: two
    `started`) until it is cancelled; the status counts the crash."""
    workers = [rig.worker("a", wait=False), rig.worker("b", wait=False)]
    rig.wait_ready(*workers)
    job = rig.job("kill-train", seed=909, epochs=LONG_EPOCHS)
    enqueue(rig.client, job)
    _training(rig, job)
    victim = _runner(rig, job, workers)
    victim.kill()
    survivors = [w for w in workers if w is not victim]
    _cancel_the_rerun(rig, job, survivors)
    assert_invariants(
        rig.client, rig.model_dir, [job], survivors, starts={job.request_id: 2}, tag="kill"
    )
    final = status(rig.client, job.request_id)
    assert final["worker"] == survivors[0].consumer
    assert final.get("crashes") == "1", describe(rig.client, [job])


@pytest.mark.parametrize(
    ("point", "starts"),
    [
        pytest.param("after_train", 2, id="during-upload-before-it"),
        pytest.param("after_upload", 2, id="after-the-201"),
        pytest.param("after_commit", 1, id="between-final-event-and-ack"),
    ],
)
def test_worker_killed_at_a_fault_point(rig: Rig, point: str, starts: int) -> None:
    """The crashing worker takes the job (it starts alone), the survivor starts once it runs.
    Killed before the job's outcome was committed, the job is trained again elsewhere (two
    `started`); killed after it, the job is over and nobody runs it again (one `started`)."""
    crashing = rig.worker("crashing", HANDWRITING_AI_CRASH_AT=point)
    job = rig.job(f"crash-{point}", seed=111, epochs=2, model_id=f"mnist_digitnet_tiny_{point}")
    enqueue(rig.client, job)
    wait_for(lambda: count(rig.client, job.request_id, "started") >= 1, timeout_s=120, what="start")
    assert status(rig.client, job.request_id)["worker"] == crashing.consumer
    survivor = rig.worker("survivor")
    try:
        code = crashing.process.wait(180)
    except subprocess.TimeoutExpired:
        code = None
    assert code == -9, (
        f"the worker with HANDWRITING_AI_CRASH_AT={point} did not kill itself (exit {code}):"
        f"\n{describe(rig.client, [job])}\n{tail(crashing.log())}"
    )
    settle(rig.client, [job], timeout_s=240, workers=[survivor])
    assert_invariants(
        rig.client, rig.model_dir, [job], [survivor], starts={job.request_id: starts}, tag=point
    )
    # One job, one stored version: after `after_upload` the rerun's upload is answered with the
    # version the first run stored (its manifest names the same job).
    versions = list_versions(rig.model_dir, job.model_id)
    assert len(versions) == 1, versions


def test_two_workers_race_to_reclaim_a_dead_workers_entry(rig: Rig) -> None:
    """Three workers; the one running the job is killed. Exactly one of the two idle ones takes
    its entry: one `started` after the death (checked once the job has ended, cancelled on the
    winner), and the job ends once."""
    workers = [rig.worker(name, wait=False) for name in ("a", "b", "c")]
    rig.wait_ready(*workers)
    job = rig.job("race", seed=222, epochs=LONG_EPOCHS)
    enqueue(rig.client, job)
    _training(rig, job)
    victim = _runner(rig, job, workers)
    racers = [w for w in workers if w is not victim]
    victim.kill()
    _cancel_the_rerun(rig, job, racers)
    assert_invariants(
        rig.client, rig.model_dir, [job], racers, starts={job.request_id: 2}, tag="race"
    )


def _training_child(worker: WorkerProcess) -> int:
    """The pid of the worker's training subprocess (a spawned child, not the resource tracker)."""
    for child in Path(f"/proc/{worker.process.pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return int(pid)
    raise AssertionError(f"no training child under worker {worker.process.pid}")


def test_a_slot_that_cannot_start_again_ends_its_worker(rig: Rig) -> None:
    """Finding 6: the training child dies and can no longer be started (fault point
    `slot_restart`): the worker does not idle on with a healthy health key; it ends the job's
    run as a failure, exits 1 for its supervisor, and another worker runs the retry once."""
    broken = rig.worker("broken", HANDWRITING_AI_CRASH_AT="slot_restart")
    job = rig.job("slot-lost", seed=333, epochs=12)
    enqueue(rig.client, job)
    _training(rig, job)
    os.kill(_training_child(broken), signal.SIGKILL)
    try:
        code = broken.process.wait(120)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 1, f"exit {code}:\n{tail(broken.log())}"
    assert "worker_cannot_go_on" in broken.log()
    assert not rig.client.exists(f"digits:worker:{broken.consumer}:health")
    survivor = rig.worker("survivor")
    settle(rig.client, [job], timeout_s=240, workers=[survivor])
    assert_invariants(
        rig.client, rig.model_dir, [job], [survivor], starts={job.request_id: 2}, tag="slot"
    )
