"""Corrections into training (`use_feedback`): the held-back split by request-id hash, the worker's
reading of `digits:feedback`, a run that learns what it was corrected on, and a real worker that
reports `feedback_acc` on its `completed` event, in its status and in the uploaded manifest.

The made-up samples are patterns no digit looks like (a checkerboard read as 4, horizontal bars
read as 6): a run without the corrections reads them as something else, the same run with them
reads them right, so mixing them in is what the test sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from attrs import evolve
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT
from structlog.testing import capture_logs

import stream_helpers
from handwriting_ai.contracts.events import TrainCompleted, now_iso
from handwriting_ai.contracts.feedback import Correction, correction_fields, encode_sample
from handwriting_ai.inference.manifest import Manifest, read_manifest
from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE, version_dir
from handwriting_ai.models import create_model
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.streams.keys import FEEDBACK_STREAM
from handwriting_ai.training.config import TrainConfig, recipe_of
from handwriting_ai.training.feedback import (
    U8,
    FeedbackFileError,
    FeedbackSet,
    feedback_set,
    load_feedback,
    repeated,
    save_feedback,
    split_holdout,
)
from handwriting_ai.training.loop import predict_logits
from handwriting_ai.training.run import TrainResult, run_training
from handwriting_ai.worker import serve_worker
from handwriting_ai.worker.feedback import FEEDBACK_DIR, read_corrections, write_corrections
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    events,
    live_api,
    status,
    worker_env,
    worker_settings,
    xadd,
)

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
# Two epochs on 960 rendered digits learn them (tests/test_learning.py): a model worth correcting.
TINY = TrainConfig(
    model_id="mnist_tiny_v1", arch="digitnet_tiny", epochs=2, batch_size=32, threads=1
)
CHECKER_LABEL, BARS_LABEL = 4, 6
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
BURST_TIMEOUT_S = 180.0


def hashed_out(request_id: str, fraction: float) -> bool:
    """The held-back rule, written out independently of the code under test."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def checkerboard(dy: int, dx: int) -> U8:
    image = np.zeros((28, 28), np.uint8)
    for row in range(4, 24, 4):
        for col in range(4, 24, 4):
            if (row // 4 + col // 4) % 2 == 0:
                image[row : row + 4, col : col + 4] = 255
    return np.roll(image, (dy, dx), axis=(0, 1))


def bars(dy: int, dx: int) -> U8:
    image = np.zeros((28, 28), np.uint8)
    for row in range(5, 23, 4):
        image[row : row + 2, 5:23] = 255
    return np.roll(image, (dy, dx), axis=(0, 1))


def patterns() -> FeedbackSet:
    """18 corrections: 9 shifted checkerboards (4) and 9 shifted bar patterns (6)."""
    pixels = [checkerboard(*s) for s in SHIFTS] + [bars(*s) for s in SHIFTS]
    labels = [CHECKER_LABEL] * len(SHIFTS) + [BARS_LABEL] * len(SHIFTS)
    return feedback_set(pixels, labels, [f"read-{i:02d}" for i in range(len(labels))])


def reads(result: TrainResult, pixels: U8) -> list[int]:
    model = create_model(result.manifest.arch)
    model.load_state_dict(torch.load(result.directory / MODEL_FILE, weights_only=True))
    predicted: list[int] = predict_logits(model, torch.from_numpy(pixels)).argmax(1).tolist()
    return predicted


def correction(request_id: str, label: int, pixels: U8) -> Correction:
    return Correction(
        request_id=request_id,
        label=label,
        predicted=(label + 1) % 10,
        confidence=0.5,
        model_id="ensemble_3_models",
        ts=now_iso(),
        sample=encode_sample(pixels),
    )


def flat(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """An entry's fields as redis-py's XADD takes them."""
    return {k: v for k, v in fields.items()}


# --------------------------------------------------------------------------- the split


def test_the_split_is_deterministic_disjoint_and_covers_every_correction() -> None:
    ids = [f"req-{i}" for i in range(1000)]
    trained, held = split_holdout(ids, 0.2)
    assert (trained, held) == split_holdout(ids, 0.2)
    assert set(trained).isdisjoint(held)
    assert sorted(trained + held) == list(range(len(ids)))
    assert {ids[i] for i in held} == {rid for rid in ids if hashed_out(rid, 0.2)}
    assert 0.16 <= len(held) / len(ids) <= 0.24, len(held)
    # Each read's side depends on its own id, not on the others or their order.
    shuffled = ids[::-1]
    random.Random(0).shuffle(shuffled)
    _, held_again = split_holdout(shuffled[:500], 0.2)
    assert {shuffled[i] for i in held_again} == {
        rid for rid in shuffled[:500] if hashed_out(rid, 0.2)
    }


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.95])
def test_two_or_more_corrections_hold_one_back_and_train_on_one(fraction: float) -> None:
    # Pairs for which the hash alone would hold back none, or all: the rule must step in.
    pairs = [(f"a{i}", f"b{i}") for i in range(200)]
    for pair in pairs:
        trained, held = split_holdout(pair, fraction)
        assert len(trained) >= 1, (pair, fraction)
        assert len(held) >= 1, (pair, fraction)
        by_hash = [i for i, rid in enumerate(pair) if hashed_out(rid, fraction)]
        if 0 < len(by_hash) < 2:
            assert held == by_hash  # the hash decides whenever it leaves both sides non-empty
    assert any(not any(hashed_out(r, 0.01) for r in p) for p in pairs)  # the rule was needed
    assert any(all(hashed_out(r, 0.95) for r in p) for p in pairs)


def test_one_correction_follows_its_hash_and_fraction_zero_holds_none_back() -> None:
    for rid in (f"solo-{i}" for i in range(50)):
        trained, held = split_holdout([rid], 0.5)
        assert (held, trained) == (([0], []) if hashed_out(rid, 0.5) else ([], [0]))
    assert split_holdout([f"z{i}" for i in range(10)], 0.0) == (list(range(10)), [])
    assert split_holdout([], 0.2) == ([], [])
    with pytest.raises(ValueError, match="within"):
        split_holdout(["x"], 1.0)


def test_the_file_round_trips_and_anything_else_is_refused(tmp_path: Path) -> None:
    corrections = patterns()
    loaded = load_feedback(save_feedback(tmp_path / "fb.npz", corrections))
    assert loaded.request_ids == corrections.request_ids
    assert np.array_equal(loaded.pixels, corrections.pixels)
    assert loaded.labels.dtype == np.int64
    assert loaded.labels.tolist() == corrections.labels.tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["fb.npz"]  # no temporary file left
    pixels, labels = repeated(corrections, 3)
    assert pixels.shape == (54, 28, 28)
    assert labels.tolist() == corrections.labels.tolist() * 3

    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 28, 28), np.float32), labels=[1, 2])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name in ("bad.npz", "junk.npz", "missing.npz"):
        with pytest.raises(FeedbackFileError):
            load_feedback(tmp_path / name)
    with pytest.raises(FeedbackFileError, match="repeat"):
        feedback_set(corrections.pixels[:2], [1, 2], ["same", "same"])


def test_the_recipe_keeps_the_weighting_but_not_the_path() -> None:
    plain = recipe_of(TINY)
    assert not any(key.startswith("feedback") for key in plain)
    fed = recipe_of(evolve(TINY, feedback_path="/scratch/x.npz", feedback_repeat=5))
    assert "feedback_path" not in fed
    assert (fed["feedback_holdout"], fed["feedback_repeat"]) == (0.2, 5)
    assert {k: v for k, v in fed.items() if not k.startswith("feedback")} == plain


# --------------------------------------------------------------------------- reading the stream


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True, encoding_errors="surrogateescape")
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_worker_reads_every_correction_newest_per_read_skipping_bad_ones(
    aredis: Redis, tmp_path: Path
) -> None:
    sample = patterns().pixels
    written = [
        correction("r-a", 1, sample[0]),
        correction("r-b", 2, sample[1]),
        correction("r-c", 3, sample[2]),
        correction("r-b", 7, sample[3]),  # the same read corrected again: this one counts
        correction("r-d", 4, sample[4]),
    ]
    for item in written[:2]:
        await aredis.xadd(FEEDBACK_STREAM, flat(correction_fields(item)))
    await aredis.xadd(FEEDBACK_STREAM, flat({**correction_fields(written[2]), "sample": "!!"}))
    await aredis.xadd(FEEDBACK_STREAM, flat({"type": "digits.feedback.v1", "label": "3"}))
    for item in written[2:]:
        await aredis.xadd(FEEDBACK_STREAM, flat(correction_fields(item)))

    with capture_logs() as logs:
        got = await read_corrections(aredis, chunk=2)  # several XRANGE pages
    assert got.request_ids == ("r-a", "r-c", "r-b", "r-d")
    assert got.labels.tolist() == [1, 3, 7, 4]
    assert np.array_equal(got.pixels[2], sample[3])
    bad = [e for e in logs if e["event"] == "feedback_malformed"]
    assert len(bad) == 2
    assert "@ $.sample" in bad[0]["reason"]

    with capture_logs() as logs:
        result = await write_corrections(aredis, tmp_path, "job1", stale_after_s=60)
    assert result is not None
    path, count = result
    assert (path, count) == (tmp_path / "job1.npz", 4)
    assert load_feedback(path).request_ids == got.request_ids
    assert any(e["event"] == "feedback_read" and e["corrections"] == 4 for e in logs)


async def test_no_corrections_means_no_file_and_a_log_line(aredis: Redis, tmp_path: Path) -> None:
    stale = tmp_path / "left-by-a-killed-worker.npz"
    stale.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with capture_logs() as logs:
        assert await write_corrections(aredis, tmp_path, "job2", stale_after_s=60) is None
    assert [e["event"] for e in logs] == ["feedback_none"]
    assert not (tmp_path / "job2.npz").exists()

    await aredis.xadd(
        FEEDBACK_STREAM, flat(correction_fields(correction("r", 1, patterns().pixels[0])))
    )
    fresh = tmp_path / "another-live-job.npz"
    fresh.write_bytes(b"x")
    assert await write_corrections(aredis, tmp_path, "job3", stale_after_s=60) is not None
    assert sorted(os.listdir(tmp_path)) == ["another-live-job.npz", "job3.npz"]


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"), train=1200, test=200)


@pytest.mark.slow
def test_a_run_learns_its_corrections_and_measures_the_held_back_ones(
    data_root: Path, tmp_path: Path
) -> None:
    corrections = patterns()
    path = save_feedback(tmp_path / "feedback.npz", corrections)
    expected_held = sorted(r for r in corrections.request_ids if hashed_out(r, 0.2))
    assert 0 < len(expected_held) < len(corrections)  # the hash alone decides here

    without = run_training(TINY, data_root=data_root, model_dir=tmp_path / "plain")
    fed_cfg = evolve(TINY, feedback_path=str(path), feedback_holdout=0.2, feedback_repeat=20)
    fed = run_training(fed_cfg, data_root=data_root, model_dir=tmp_path / "fed")

    manifest = read_manifest(fed.directory / MANIFEST_FILE, expected_hash=preprocess_hash())
    assert manifest.feedback_holdout == expected_held
    assert manifest.feedback_count == len(corrections) - len(expected_held)
    assert manifest.feedback_acc is not None
    assert 0.0 <= manifest.feedback_acc <= 1.0
    assert manifest.feedback_acc == round(manifest.feedback_acc, 6)
    assert "feedback_path" not in manifest.training_recipe
    assert str(path) not in json.dumps(manifest.training_recipe)
    assert manifest.training_recipe["feedback_repeat"] == 20
    metrics = json.loads((fed.directory / METRICS_FILE).read_text())
    assert metrics["feedback_acc"] == manifest.feedback_acc
    plain = read_manifest(without.directory / MANIFEST_FILE, expected_hash=preprocess_hash())
    assert (plain.feedback_count, plain.feedback_holdout, plain.feedback_acc) == (0, [], None)
    assert "feedback_acc" not in json.loads((without.directory / METRICS_FILE).read_text())

    # What was corrected is read right afterwards; the same run without the corrections reads
    # these patterns as other digits (the control: without it the test could pass by chance).
    trained = [i for i, r in enumerate(corrections.request_ids) if r not in expected_held]
    truth = corrections.labels[trained].tolist()
    fed_reads = reads(fed, corrections.pixels[trained])
    plain_reads = reads(without, corrections.pixels[trained])
    fed_right = sum(a == b for a, b in zip(fed_reads, truth, strict=True)) / len(truth)
    plain_right = sum(a == b for a, b in zip(plain_reads, truth, strict=True)) / len(truth)
    assert fed_right >= 0.9, (fed_reads, truth)
    assert plain_right <= 0.5, (plain_reads, truth)
    # The held-back ones are near copies (one pixel of shift): measured, and learned from the rest.
    assert manifest.feedback_acc >= 0.5


# --------------------------------------------------------------------------- a real worker


@pytest.fixture
def api(tmp_path: Path) -> Iterator[LiveApi]:
    with live_api(tmp_path) as live:
        yield live


async def run_feedback_job(
    tmp_path: Path, data_root: Path, api: LiveApi, redis_url: str
) -> tuple[TrainCompleted, dict[str, object], Manifest]:
    """`redis-cli XADD digits:train '*' … use_feedback true`, drained by a burst worker: the
    job's `completed` event, its status `result`, and the manifest the API stored."""
    with redis.Redis.from_url(redis_url) as client:
        job = {
            "request_id": "fb-job",
            "model_id": TINY_MODEL_ID,
            "epochs": "2",
            "batch_size": "32",
            "augment": "false",
            "use_feedback": "true",
        }
        xadd(client, job)
        env = worker_env(redis_url, data_root, tmp_path, api, FEEDBACK__REPEAT="20")
        await asyncio.wait_for(
            serve_worker(worker_settings(env), burst=True, install_signals=False), BURST_TIMEOUT_S
        )
        final = status(client, "fb-job")
        assert final["status"] == "completed", final
        done = events(client, "fb-job")[-1]
    assert isinstance(done, TrainCompleted)
    result: object = json.loads(final["result"])
    assert isinstance(result, dict)
    (version,) = api.versions()
    uploaded = read_manifest(
        version_dir(api.model_dir, TINY_MODEL_ID, version) / MANIFEST_FILE,
        expected_hash=preprocess_hash(),
    )
    assert uploaded.version == done.version
    # The scratch file is gone once the child is done with it.
    assert list((tmp_path / "artifacts" / FEEDBACK_DIR).glob("*.npz")) == []
    return done, result, uploaded


@pytest.mark.slow
async def test_a_use_feedback_job_reports_feedback_acc_end_to_end(
    tmp_path: Path, data_root: Path, api: LiveApi, redis_url: str
) -> None:
    corrections = patterns()
    with redis.Redis.from_url(redis_url) as client:
        # As the API writes them, plus an earlier answer for one read and a broken entry.
        client.xadd(
            FEEDBACK_STREAM,
            flat(correction_fields(correction("read-00", 9, corrections.pixels[0]))),
        )
        client.xadd(FEEDBACK_STREAM, flat({"type": "digits.feedback.v1", "request_id": "broken"}))
        for rid, label, pixels in zip(
            corrections.request_ids, corrections.labels.tolist(), corrections.pixels, strict=True
        ):
            client.xadd(FEEDBACK_STREAM, flat(correction_fields(correction(rid, label, pixels))))
    done, result, uploaded = await run_feedback_job(tmp_path, data_root, api, redis_url)

    expected_held = sorted(r for r in corrections.request_ids if hashed_out(r, 0.2))
    assert isinstance(done, TrainCompleted)
    assert done.feedback_acc is not None
    assert 0.0 <= done.feedback_acc <= 1.0
    assert done.feedback_holdout == len(expected_held)
    assert result["feedback_acc"] == done.feedback_acc
    assert result["feedback_holdout"] == len(expected_held)
    assert result["feedback_count"] == len(corrections) - len(expected_held)
    assert uploaded.feedback_holdout == expected_held
    assert uploaded.feedback_count == len(corrections) - len(expected_held)
    assert uploaded.feedback_acc == done.feedback_acc
    assert "feedback_path" not in uploaded.training_recipe
    assert uploaded.training_recipe["feedback_repeat"] == 20


@pytest.mark.slow
async def test_a_use_feedback_job_without_corrections_trains_on_mnist_alone(
    tmp_path: Path, data_root: Path, api: LiveApi, redis_url: str
) -> None:
    done, result, uploaded = await run_feedback_job(tmp_path, data_root, api, redis_url)
    assert (done.feedback_acc, done.feedback_holdout) == (None, 0)
    assert (result["feedback_acc"], result["feedback_holdout"], result["feedback_count"]) == (
        None,
        0,
        0,
    )
    assert (uploaded.feedback_count, uploaded.feedback_holdout, uploaded.feedback_acc) == (
        0,
        [],
        None,
    )
    assert not any(key.startswith("feedback") for key in uploaded.training_recipe)
