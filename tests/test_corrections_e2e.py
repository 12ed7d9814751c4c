"""Corrections end to end (issue 14), as a deployment lives them, with a real Redis, the real API
over HTTP and a real worker.

The API serves one model id, `mnist_digitnet_v1`, whose current version is a shipped model
(`models/mnist_digitnet_a`, installed under that id). Photos in a made-up handwriting
(`handwriting_styles.py`: a 2 written as a crossed Z, a 6 drawn square) are read through
`POST /v1/read`, mostly wrong; each read is corrected through `POST /v1/feedback`; a
`use_feedback` job queued through `POST /v1/train` is trained by a burst worker on tiny MNIST
plus the corrections, holding some back, and reports `feedback_acc`; the API's promotion gate
serves the new version, which reads the same photos right, the held-back ones included.

A control job, `redis-cli XADD`-shaped, trains the same recipe without the corrections (for a
model id nobody serves): it reads the style as wrongly as the shipped model, so it is the
corrections, not the tiny training set, that taught the new version.

The figures are printed (`pytest -s`): the shipped model's accuracy on the style, the control's,
the new version's on the corrections it trained on and on those its run held back, and
`feedback_acc`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.contracts.events import TrainCompleted
from handwriting_ai.contracts.feedback import decode_sample
from handwriting_ai.inference.engine import load_member
from handwriting_ai.inference.manifest import Manifest, read_manifest
from handwriting_ai.inference.store import MANIFEST_FILE, current_version, set_current, version_dir
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.streams.keys import read_sample_key
from handwriting_ai.training.loop import predict_logits
from handwriting_ai.worker import serve_worker
from handwriting_styles import Photo, boxy_photos
from helpers import json_of, make_settings
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    LiveApi,
    SyncRedis,
    events,
    serve_app,
    status,
    wait_until,
    worker_env,
    worker_settings,
    xadd,
)

pytestmark = pytest.mark.slow
redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

SERVED_ID = "mnist_digitnet_v1"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "mnist_digitnet_a"
PHOTOS = 32
# More than the default 0.2, so the held-back figure rests on 10 reads rather than 6.
HOLDOUT_FRACTION = 0.3
JOB_ID = "boxy-hand-job"
CONTROL_ID, CONTROL_JOB_ID = "mnist_digitnet_control", "boxy-hand-control"
# The same recipe for both jobs: two epochs over the tiny set's 960 training images (plus each
# correction 20 times, FEEDBACK__REPEAT's default, for the use_feedback job), augmented.
RECIPE = {"epochs": 2, "batch_size": 32}
BURST_TIMEOUT_S = 240.0


def install_shipped(model_dir: Path) -> str:
    """The shipped model's current version, installed as the current version of `SERVED_ID`
    (same arch, digitnet): the job for that id then makes new versions of what is served."""
    version = current_version(SHIPPED.parent, SHIPPED.name)
    assert version is not None
    target = version_dir(model_dir, SERVED_ID, version)
    shutil.copytree(SHIPPED / version, target)
    manifest: object = json.loads((target / MANIFEST_FILE).read_text())
    assert isinstance(manifest, dict)
    manifest["model_id"] = SERVED_ID
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    set_current(model_dir, SERVED_ID, version)
    return version


def body(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    value = json_of(response)
    assert isinstance(value, dict)
    return {str(k): v for k, v in value.items()}


def list_of(value: object) -> list[dict[str, object]]:
    assert isinstance(value, list)
    assert all(isinstance(item, dict) for item in value)
    return [{str(k): v for k, v in item.items()} for item in value if isinstance(item, dict)]


def read_all(http: httpx.Client, photos: Sequence[Photo], ids: Sequence[str]) -> list[int]:
    """Each photo through `POST /v1/read` under its own `X-Request-ID`: the digits read."""
    digits = []
    for photo, request_id in zip(photos, ids, strict=True):
        response = http.post(
            "/v1/read",
            files={"file": ("photo.jpg", photo.jpeg, "image/jpeg")},
            headers={"X-Request-ID": request_id},
        )
        reading = structure(body(response, 200), ReadResponse)
        assert (reading.request_id, reading.model_id) == (request_id, SERVED_ID)
        digits.append(reading.digit)
    return digits


def correct_all(
    http: httpx.Client, client: SyncRedis, photos: Sequence[Photo], ids: Sequence[str]
) -> None:
    """Each read corrected through `POST /v1/feedback`, once its sample is kept (written just
    after the answer, in a task of its own)."""
    wait_until(
        lambda: all(client.exists(read_sample_key(r)) for r in ids),
        timeout_s=10,
        what="the reads' samples to be kept",
    )
    for photo, request_id in zip(photos, ids, strict=True):
        payload = {"request_id": request_id, "label": photo.label, "user_id": 7}
        accepted = body(http.post("/v1/feedback", json=payload), 201)
        assert accepted["label"] == photo.label


def served_version(http: httpx.Client) -> str:
    (member,) = list_of(body(http.get("/v1/models/active"), 200)["members"])
    return str(member["version"])


def share_right(digits: Sequence[int], photos: Sequence[Photo], which: Sequence[int]) -> float:
    return sum(digits[i] == photos[i].label for i in which) / len(which)


async def drain(env: dict[str, str]) -> None:
    """A burst worker: it takes the queued jobs one by one, trains each in a subprocess,
    uploads the artifacts to the API, and returns when the stream is drained."""
    settings = worker_settings(env)
    await asyncio.wait_for(
        serve_worker(settings, burst=True, install_signals=False), BURST_TIMEOUT_S
    )


def completed(client: SyncRedis, request_id: str) -> TrainCompleted:
    assert status(client, request_id)["status"] == "completed", status(client, request_id)
    (done,) = [e for e in events(client, request_id) if isinstance(e, TrainCompleted)]
    assert done.version is not None
    return done


def control_reads(
    model_dir: Path, done: TrainCompleted, client: SyncRedis, ids: Sequence[str]
) -> list[int]:
    """What the control version (uploaded, never served) reads in the samples the reads kept:
    exactly the 28×28 images the served models saw."""
    assert done.version is not None
    member = load_member(
        version_dir(model_dir, CONTROL_ID, done.version), expected_hash=preprocess_hash()
    )
    kept = [client.get(read_sample_key(r)) for r in ids]
    pixels = np.stack(
        [decode_sample(str(json.loads(k)["sample"])) for k in kept if isinstance(k, bytes)]
    )
    assert len(pixels) == len(ids)
    digits: list[int] = predict_logits(member.module, torch.from_numpy(pixels)).argmax(1).tolist()
    return digits


def stored_manifest(model_dir: Path, done: TrainCompleted) -> Manifest:
    assert done.version is not None
    path = version_dir(model_dir, SERVED_ID, done.version) / MANIFEST_FILE
    return read_manifest(path, expected_hash=preprocess_hash())


def test_corrected_reads_train_a_version_that_reads_them_right(
    tmp_path: Path, redis_url: str
) -> None:
    photos = boxy_photos(PHOTOS, seed=0)
    ids = [f"boxy-{i:02d}" for i in range(PHOTOS)]
    data_root = write_tiny_mnist(tmp_path / "data", train=1200, test=200)
    model_dir = tmp_path / "api-models"
    shipped = install_shipped(model_dir)
    settings = make_settings(
        model_dir,
        [SERVED_ID],
        {
            "SECURITY__API_KEY": API_KEY,
            "REDIS_URL": redis_url,
            # The shipped version's val_acc (0.9938) was measured on real MNIST, the new one's
            # is measured on the 240 validation images of this test's tiny rendered set: they do
            # not compare (two misread there, and the default tolerance 0.002 would hold it), so
            # the val_acc bar is lowered out of the way. The gate's other bar still decides: the
            # new version must read the corrections its run held back at least as well as the
            # served one does.
            "DIGITS__PROMOTION_TOLERANCE": "1",
            "FEEDBACK__RATE_PER_MINUTE": "1000",  # 32 corrections from one address at once
        },
    )
    with (
        serve_app(create_app(settings)) as url,
        httpx.Client(base_url=url, headers={"X-Api-Key": API_KEY}, timeout=30) as http,
        SyncRedis.from_url(redis_url) as client,
    ):
        assert served_version(http) == shipped

        # 1. The shipped model reads the style wrong; each read is corrected.
        before = read_all(http, photos, ids)
        shipped_acc = share_right(before, photos, range(PHOTOS))
        assert shipped_acc <= 0.3, list(zip(before, [p.label for p in photos], strict=True))
        correct_all(http, client, photos, ids)

        # 2. A use_feedback job (as the web page asks) and the control (as an operator types
        # it), both drained by a real worker on tiny MNIST.
        job = {"request_id": JOB_ID, "model_id": SERVED_ID, **RECIPE, "use_feedback": True}
        body(http.post("/v1/train", json=job), 202)
        fields = {"request_id": CONTROL_JOB_ID, "model_id": CONTROL_ID, **RECIPE}
        xadd(client, {k: str(v) for k, v in fields.items()})
        env = worker_env(
            redis_url,
            data_root,
            tmp_path,
            LiveApi(url, model_dir),
            FEEDBACK__HOLDOUT_FRACTION=str(HOLDOUT_FRACTION),
        )
        asyncio.run(drain(env))  # the API answers from its own thread meanwhile
        done, control = completed(client, JOB_ID), completed(client, CONTROL_JOB_ID)
        assert done.feedback_acc is not None
        assert done.feedback_holdout >= 1
        result = body(http.get(f"/v1/train/{JOB_ID}"), 200)["result"]
        assert isinstance(result, dict)
        assert (result["feedback_acc"], result["feedback_holdout"]) == (
            done.feedback_acc,
            done.feedback_holdout,
        )
        assert (control.feedback_acc, control.feedback_holdout) == (None, 0)

        # 3. The gate serves the new version; it reads the same photos right.
        wait_until(
            lambda: served_version(http) == done.version, timeout_s=30, what="the new version"
        )
        manifest = stored_manifest(model_dir, done)
        held_ids = set(manifest.feedback_holdout)
        assert held_ids <= set(ids)
        assert len(held_ids) == done.feedback_holdout
        assert manifest.feedback_count == PHOTOS - len(held_ids)
        held = [i for i, r in enumerate(ids) if r in held_ids]
        trained = [i for i, r in enumerate(ids) if r not in held_ids]
        after = read_all(http, photos, [f"{r}-again" for r in ids])
        new_trained, new_held = (
            share_right(after, photos, trained),
            share_right(after, photos, held),
        )
        shipped_held = share_right(before, photos, held)
        control_acc = share_right(
            control_reads(model_dir, control, client, ids), photos, range(PHOTOS)
        )
        misread = {
            name: dict(Counter(d for d, p in zip(before, photos, strict=True) if p.style == name))
            for name in dict.fromkeys(p.style for p in photos)
        }
        print(
            f"\nboxy hand, {PHOTOS} photos: shipped {SHIPPED.name} reads {shipped_acc:.0%} right"
            f" {misread} ({shipped_held:.0%} of the {len(held)} held back);"
            f" control (same recipe, no corrections) {control_acc:.0%};"
            f" new version {done.version} reads {new_trained:.0%} of the {len(trained)} it"
            f" trained on and {new_held:.0%} of the {len(held)} held back;"
            f" feedback_acc {done.feedback_acc:.4f}, val_acc {done.val_acc:.4f}"
        )
        assert new_trained >= 0.9, list(zip(after, [p.label for p in photos], strict=True))
        assert new_held > shipped_held
        assert control_acc <= 0.3  # the tiny set alone does not teach the style
        # What the worker reported is what users get: the run measured the held-back samples
        # the reads kept, the API reads the photos again (in its own runtime, so one borderline
        # sample may come out differently).
        assert abs(new_held - done.feedback_acc) <= 1 / len(held) + 1e-9

        # 4. The registry lists the new version as promoted by the gate.
        models = list_of(body(http.get("/v1/models"), 200)["models"])
        (entry,) = [m for m in models if m["model_id"] == SERVED_ID]
        versions = {str(v["version"]): v for v in list_of(entry["versions"])}
        new = versions[str(done.version)]
        assert entry["current"] == done.version
        assert (new["status"], new["decision"]) == ("current", "promoted")
        assert versions[shipped]["status"] == "previous"
