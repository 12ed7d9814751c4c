"""Training on tiny generated IDX data: artifacts the service serves, determinism, retention,
progress, cancellation and clear user errors."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from attrs import evolve

from conftest import Serve
from handwriting_ai.cli import main as cli_main
from handwriting_ai.data.idx import read_idx, write_idx
from handwriting_ai.data.mnist import DataMissingError, load_mnist
from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.inference.manifest import SCHEMA_VERSION, read_manifest
from handwriting_ai.inference.store import MANIFEST_FILE, list_versions, set_current
from handwriting_ai.models import create_model
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.training.config import TrainConfig
from handwriting_ai.training.dataset import preprocess_all
from handwriting_ai.training.loop import TrainingCancelledError
from handwriting_ai.training.progress import BatchProgress, BestProgress, EpochProgress
from handwriting_ai.training.run import InvalidTrainConfigError, TrainResult, run_training
from helpers import make_settings, png_bytes, post_read, seven
from tiny_mnist import preprocess_in_a_daemon, write_tiny_mnist

pytestmark = pytest.mark.slow
TINY = TrainConfig(
    model_id="mnist_tiny_v1", arch="digitnet_tiny", epochs=1, batch_size=32, threads=1
)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[BatchProgress] = []
        self.epochs: list[EpochProgress] = []
        self.bests: list[BestProgress] = []

    def on_batch(self, progress: BatchProgress) -> None:
        self.batches.append(progress)

    def on_epoch(self, progress: EpochProgress) -> None:
        self.epochs.append(progress)

    def on_best(self, progress: BestProgress) -> None:
        self.bests.append(progress)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped: the preprocessed cache is built once and shared by these tests.
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


def train(cfg: TrainConfig, data_root: Path, model_dir: Path, **kwargs: object) -> TrainResult:
    recorder = kwargs.get("reporter")
    return run_training(
        cfg,
        data_root=data_root,
        model_dir=model_dir,
        reporter=recorder if isinstance(recorder, Recorder) else None,
        batch_every=2,
    )


def test_idx_round_trip(tmp_path: Path) -> None:
    images, labels = render_digits(12, seed=3)
    for name, array in (("x.gz", images), ("y", labels)):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)


def test_one_epoch_writes_a_v11_artifact_the_service_serves(
    data_root: Path, model_dir: Path, serve: Serve
) -> None:
    recorder = Recorder()
    result = train(TINY, data_root, model_dir, reporter=recorder)

    manifest = read_manifest(result.directory / MANIFEST_FILE, expected_hash=preprocess_hash())
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.model_id == "mnist_tiny_v1"
    assert manifest.arch == "digitnet_tiny"
    assert manifest.version == manifest.run_id == result.directory.name
    assert manifest.training_epochs == 1
    assert manifest.training_seed == 42
    assert manifest.training_recipe["arch"] == "digitnet_tiny"
    assert len(manifest.recipe_hash) == 16
    assert manifest.test_acc is not None
    assert 0.0 <= manifest.test_acc <= 1.0
    assert manifest.temperature > 0
    assert manifest.parent_model_id is None
    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert metrics["val_nll_after"] <= metrics["val_nll_before"]

    # Progress: batches every 2 (and the last), one epoch line, one best.
    total = recorder.batches[-1].total_batches
    assert [b.batch for b in recorder.batches] == [
        *range(2, total + 1, 2),
        *([total] if total % 2 else []),
    ]
    assert len(recorder.epochs) == 1
    assert recorder.epochs[0].val_acc == manifest.val_acc
    assert [b.epoch for b in recorder.bests] == [1]

    client = serve(make_settings(model_dir, ["mnist_tiny_v1"]))
    response = post_read(client, png_bytes(seven()))
    assert response.status_code == 200
    assert response.json()["model_id"] == "mnist_tiny_v1"
    active = client.get("/v1/models/active").json()
    assert active["members"][0]["version"] == manifest.version


def test_same_seed_same_weights(data_root: Path, tmp_path: Path) -> None:
    a = train(TINY, data_root, tmp_path / "a")
    b = train(TINY, data_root, tmp_path / "b")
    c = train(evolve(TINY, seed=7), data_root, tmp_path / "c")
    assert a.weights_sha256 == b.weights_sha256
    assert a.weights_sha256 != c.weights_sha256


def test_ema_ships_the_average_and_says_so_in_the_recipe(data_root: Path, tmp_path: Path) -> None:
    plain = train(TINY, data_root, tmp_path / "plain")
    averaged = train(evolve(TINY, ema_decay=0.99), data_root, tmp_path / "ema")
    assert plain.weights_sha256 != averaged.weights_sha256
    assert averaged.manifest.training_recipe["ema_decay"] == 0.99
    # The same seed starts both runs from the same weights: the average has moved from them
    # towards where the plain run ended, not stayed at the start.
    torch.manual_seed(TINY.seed)
    start = create_model(TINY.arch).state_dict()
    end = torch.load(plain.directory / "model.pt", weights_only=True)
    shipped = torch.load(averaged.directory / "model.pt", weights_only=True)
    weights = [k for k, v in start.items() if v.is_floating_point() and k.endswith("weight")]

    def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return sum(float((a[k] - b[k]).norm()) for k in weights)

    assert distance(shipped, start) > 0
    assert distance(shipped, end) < distance(start, end)
    # Off, the knob is not in the recipe: runs without it keep the hash they had before it.
    assert "ema_decay" not in plain.manifest.training_recipe


def test_retention_keeps_the_newest_and_the_active_version(
    data_root: Path, model_dir: Path
) -> None:
    first = train(TINY, data_root, model_dir)
    set_current(model_dir, TINY.model_id, first.manifest.version)
    pruned = [train(TINY, data_root, model_dir).pruned for _ in range(4)]
    versions = list_versions(model_dir, TINY.model_id)
    assert first.manifest.version in versions  # active: never deleted
    assert len(versions) == 4  # the 3 newest + the active one
    assert sum(len(p) for p in pruned) == 1


def test_cancellation_is_checked_between_batches(data_root: Path, model_dir: Path) -> None:
    calls = iter(range(1000))
    with pytest.raises(TrainingCancelledError, match="batch 3"):
        run_training(
            TINY, data_root=data_root, model_dir=model_dir, should_stop=lambda: next(calls) >= 3
        )
    assert list_versions(model_dir, TINY.model_id) == []


def test_missing_data_is_a_clear_user_error(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(
        DataMissingError, match=str(tmp_path / "nowhere" / "mnist" / "MNIST" / "raw")
    ):
        run_training(TINY, data_root=tmp_path / "nowhere", model_dir=model_dir)
    with pytest.raises(DataMissingError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")


def test_cli_reports_missing_data_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP__DATA_ROOT", str(tmp_path / "empty"))
    code = cli_main(["train", "--model-id", "mnist_tiny_v1", "--model-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert "MNIST train files not found in" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (evolve(TINY, epochs=0), "epochs must be within 1..500, got 0"),
        (evolve(TINY, lr=0.0), "lr must be within (0, 1], got 0.0"),
        (evolve(TINY, batch_size=-1), "batch_size must be within 0..8192 (0 = auto), got -1"),
        (evolve(TINY, arch="nope"), "unknown arch 'nope'; valid: digitnet,"),
        (evolve(TINY, model_id="../etc"), "model_id '../etc' must match"),
        (evolve(TINY, ema_decay=1.0), "ema_decay must be within [0, 1), got 1.0"),
    ],
)
def test_impossible_configs_are_refused(
    cfg: TrainConfig, message: str, data_root: Path, model_dir: Path
) -> None:
    with pytest.raises(InvalidTrainConfigError) as caught:
        run_training(cfg, data_root=data_root, model_dir=model_dir)
    assert message in str(caught.value)


def test_cli_trains_and_activates(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP__DATA_ROOT", str(data_root))
    out = tmp_path / "models"
    code = cli_main(
        [
            "train",
            "--model-id",
            "mnist_tiny_v1",
            "--arch",
            "digitnet_tiny",
            "--threads",
            "1",
            "--batch-size",
            "64",
            "--model-dir",
            str(out),
            "--activate",
        ]
    )
    assert code == 0
    assert (out / "mnist_tiny_v1" / "CURRENT").read_text().strip() == list_versions(
        out, "mnist_tiny_v1"
    )[0]
    assert torch.load(next(out.glob("mnist_tiny_v1/*/model.pt")), weights_only=True)


@pytest.mark.slow
def test_preprocessing_a_full_data_set_works_inside_a_worker_slot() -> None:
    # A worker's training slot is a daemonic process: it may not start a process pool, and the
    # first job on a fresh data root preprocesses all of MNIST (above the parallel threshold).
    images, _ = render_digits(2400, seed=5)
    context = mp.get_context("spawn")
    results = context.Queue()
    slot = context.Process(target=preprocess_in_a_daemon, args=(images, results), daemon=True)
    slot.start()
    outcome = results.get(timeout=240)
    slot.join(30)
    assert isinstance(outcome, tuple), outcome
    pixels, ok = outcome
    serial_pixels, serial_ok = preprocess_all(images, processes=1)
    assert np.array_equal(ok, serial_ok)
    assert np.array_equal(pixels, serial_pixels)
