"""The API fails the upload of a finished job: down for 30 s when training ends, 500 a few times,
or refusing the worker's key. A finished run is never trained again because its upload failed:
the artifacts are kept and only the upload is retried (issue 9, finding 4); a wrong key is a
configuration error reported at start, not three retrains."""

from __future__ import annotations

import subprocess
import time

import pytest

from faults.harness import API_KEY, Rig, enqueue, start_worker, wait_for
from faults.invariants import (
    FINAL,
    assert_invariants,
    count,
    describe,
    events,
    job_problems,
    settle,
    status,
    tail,
)
from handwriting_ai.contracts.events import TrainFailed, is_final
from handwriting_ai.inference.store import list_versions

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(600)]

API_DOWN_S = 30.0


def test_api_down_when_training_ends_and_back_30s_later(rig: Rig) -> None:
    """The job completes with one training run: one `started`, its epochs once, one version."""
    worker = rig.worker("one")
    job = rig.job("api-down", seed=505, epochs=5, model_id="mnist_digitnet_tiny_apidown")
    enqueue(rig.client, job)
    wait_for(lambda: count(rig.client, job.request_id, "started") >= 1, timeout_s=120, what="start")
    rig.proxy.refuse()  # connections to the API are refused ...
    rig.api.stop()  # ... and the API process is gone
    assert rig.proxy.uploads() == [], "the upload came before the API went down"
    wait_for(
        lambda: count(rig.client, job.request_id, "epoch") >= job.epochs,
        timeout_s=180,
        what="training to end",
    )
    time.sleep(API_DOWN_S)
    ended = status(rig.client, job.request_id).get("status")
    assert ended not in FINAL, f"ended while the API was down: {describe(rig.client, [job])}"
    rig.api.start()
    rig.proxy.listen()
    settle(rig.client, [job], timeout_s=240, workers=[worker])
    assert_invariants(rig.client, rig.model_dir, [job], [worker], tag="apidown")
    assert count(rig.client, job.request_id, "epoch") == job.epochs, describe(rig.client, [job])
    assert len(list_versions(rig.model_dir, job.model_id)) == 1


def test_api_answers_500_a_few_times_then_201(rig: Rig) -> None:
    worker = rig.worker("one")
    rig.proxy.fail_uploads(3)
    job = rig.job("api-500", seed=606, epochs=1, model_id="mnist_digitnet_tiny_api500")
    enqueue(rig.client, job)
    settle(rig.client, [job], timeout_s=240, workers=[worker])
    assert_invariants(rig.client, rig.model_dir, [job], [worker], tag="api500")
    assert rig.proxy.uploads()[:4] == [500, 500, 500, 201], rig.proxy.uploads()
    assert len(list_versions(rig.model_dir, job.model_id)) == 1


def test_a_wrong_upload_key_is_reported_at_start_and_trains_nothing(rig: Rig) -> None:
    """A worker whose HANDWRITING_API_KEY the API refuses exits 2 with a clear message before it
    takes a job; a worker with the right key then runs the job once."""
    job = rig.job("wrong-key", seed=707, epochs=1, model_id="mnist_digitnet_tiny_wrongkey")
    enqueue(rig.client, job)
    env = rig.env("bad", HANDWRITING_API_KEY="not-the-key")
    bad = start_worker(env, rig.tmp / "bad.log")
    try:
        code: int | None = bad.process.wait(90)
    except subprocess.TimeoutExpired:  # reported below with what the worker did meanwhile
        code = None
    observed = f"exit {code}; job: {describe(rig.client, [job])}\nlog:\n{tail(bad.log())}"
    bad.kill()
    assert code == 2, f"the worker with a wrong key did not exit 2: {observed}"
    assert "key" in bad.log().lower(), f"the exit does not name the key: {observed}"
    assert count(rig.client, job.request_id, "started") == 0, observed
    good = rig.worker("good")
    settle(rig.client, [job], timeout_s=180, workers=[good])
    assert_invariants(rig.client, rig.model_dir, [job], [good], tag="wrongkey")


def test_a_key_rotated_while_a_job_trains_costs_no_retrain(rig: Rig) -> None:
    """The API is restarted with another key while a job trains: its upload is refused (401).
    The run is not trained again: the job ends once, completed with its own model once the key
    is right again, or failed with a message naming the key."""
    worker = rig.worker("one")
    job = rig.job("rotated-key", seed=808, epochs=3, model_id="mnist_digitnet_tiny_rotated")
    enqueue(rig.client, job)
    wait_for(lambda: count(rig.client, job.request_id, "started") >= 1, timeout_s=120, what="start")
    rig.api.stop()
    rig.api.start(key="a-rotated-key")
    wait_for(lambda: 401 in rig.proxy.uploads(), timeout_s=180, what="the upload to get a 401")
    time.sleep(10)  # what the worker does about it: never a second training run
    assert count(rig.client, job.request_id, "started") == 1, describe(rig.client, [job])
    rig.api.stop()
    rig.api.start(key=API_KEY)
    settle(rig.client, [job], timeout_s=180, workers=[worker])
    problems = job_problems(rig.client, rig.model_dir, [job])
    terminal = [e for e in events(rig.client, job.request_id) if is_final(e)]
    if terminal and isinstance(terminal[0], TrainFailed):
        message = terminal[0].message.lower()
        if not any(word in message for word in ("key", "401", "403")):
            problems.append(f"the failure does not name the key: {terminal[0].message!r}")
    assert not problems, "\n".join(problems) + "\n" + describe(rig.client, [job])
    assert_invariants(rig.client, rig.model_dir, [job], [worker], tag="rotated")
