"""`run_training`: one training run from config to artifacts on disk. The CLI and the worker's
subprocess both call it, so a job behaves the same wherever it runs."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from attrs import frozen

from handwriting_ai.contracts.jobs import MAX_BATCH_SIZE, MAX_EPOCHS
from handwriting_ai.data.mnist import DataMissingError
from handwriting_ai.inference.manifest import SCHEMA_VERSION, Manifest
from handwriting_ai.inference.store import check_id
from handwriting_ai.logging import get_logger
from handwriting_ai.models import UnknownArchError, create_model
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.training.artifacts import (
    Metrics,
    new_run_id,
    prune_runs,
    weights_sha256,
    write_artifacts,
)
from handwriting_ai.training.calibrate import expected_calibration_error, fit_temperature, nll
from handwriting_ai.training.config import TrainConfig, recipe_hash, recipe_of
from handwriting_ai.training.dataset import preprocessed_mnist, split_train_val
from handwriting_ai.training.ema import ema_model
from handwriting_ai.training.feedback import (
    FeedbackSet,
    load_feedback,
    repeated,
    split_holdout,
    subset,
)
from handwriting_ai.training.loop import EpochPlan, accuracy, predict_logits, train_one_epoch
from handwriting_ai.training.progress import (
    BestProgress,
    EpochProgress,
    NullReporter,
    ProgressReporter,
)

log = get_logger(__name__)


class InvalidTrainConfigError(ValueError):
    """The job asks for something impossible: a user error, never retried."""


@frozen(eq=False)
class Feedback:
    """A run's corrections, split: the ones trained on and the ones held back to measure it."""

    trained: FeedbackSet
    held: FeedbackSet


def _feedback(cfg: TrainConfig) -> Feedback | None:
    if not cfg.feedback_path:
        return None
    corrections = load_feedback(Path(cfg.feedback_path))
    trained, held = split_holdout(corrections.request_ids, cfg.feedback_holdout)
    log.info(
        "train_feedback",
        corrections=len(corrections),
        trained=len(trained),
        held_back=len(held),
        repeat=cfg.feedback_repeat,
    )
    return Feedback(subset(corrections, trained), subset(corrections, held))


def _with_feedback(
    x: torch.Tensor, y: torch.Tensor, feedback: Feedback | None, repeat: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training tensors with each trained correction `repeat` times over: uint8 pixels like
    MNIST's, so the loop shuffles and augments them like every other sample."""
    if feedback is None or not len(feedback.trained):
        return x, y
    pixels, labels = repeated(feedback.trained, repeat)
    return torch.cat([x, torch.from_numpy(pixels)]), torch.cat([y, torch.from_numpy(labels)])


def _feedback_acc(model: torch.nn.Module, feedback: Feedback | None) -> float | None:
    """Accuracy on the held-back corrections; None when none were held back."""
    if feedback is None or not len(feedback.held):
        return None
    logits = predict_logits(model, torch.from_numpy(feedback.held.pixels))
    return round(accuracy(logits, torch.from_numpy(feedback.held.labels)), 6)


@frozen
class TrainResult:
    manifest: Manifest
    directory: Path
    metrics: Metrics
    pruned: list[str]
    weights_sha256: str


def validate(cfg: TrainConfig) -> None:
    try:
        check_id(cfg.model_id, "model_id")
        create_model(cfg.arch)
    except (ValueError, UnknownArchError) as exc:
        raise InvalidTrainConfigError(str(exc)) from None
    problems = []
    if not 1 <= cfg.epochs <= MAX_EPOCHS:
        problems.append(f"epochs must be within 1..{MAX_EPOCHS}, got {cfg.epochs}")
    if not 0 <= cfg.batch_size <= MAX_BATCH_SIZE:
        problems.append(
            f"batch_size must be within 0..{MAX_BATCH_SIZE} (0 = auto), got {cfg.batch_size}"
        )
    if not 0 < cfg.lr <= 1:
        problems.append(f"lr must be within (0, 1], got {cfg.lr}")
    if cfg.weight_decay < 0:
        problems.append(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.ema_decay < 1:
        problems.append(f"ema_decay must be within [0, 1), got {cfg.ema_decay}")
    if not 0 <= cfg.feedback_holdout < 1:
        problems.append(f"feedback_holdout must be within [0, 1), got {cfg.feedback_holdout}")
    if cfg.feedback_repeat < 1:
        problems.append(f"feedback_repeat must be >= 1, got {cfg.feedback_repeat}")
    if problems:
        raise InvalidTrainConfigError("; ".join(problems))


def auto_config(cfg: TrainConfig) -> TrainConfig:
    """Threads: the cores this process may use; batch size: 128 unless the job says otherwise."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    resolved = cfg.resolved(
        batch_size=cfg.batch_size or 128, threads=cfg.threads or cores, bf16_native=cpu_has_bf16()
    )
    log.info(
        "train_auto_config",
        threads=resolved.threads,
        batch_size=resolved.batch_size,
        precision=resolved.precision,
        cores=cores,
    )
    return resolved


def cpu_has_bf16() -> bool:
    """Mixed precision only pays where the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_training(
    cfg: TrainConfig,
    *,
    data_root: Path,
    model_dir: Path,
    reporter: ProgressReporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    batch_every: int = 10,
    keep_runs: int = 3,
    download: bool = False,
) -> TrainResult:
    validate(cfg)
    cfg = auto_config(cfg)
    reporter = reporter or NullReporter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()

    pixels, labels = preprocessed_mnist(data_root, "train", download=download)
    train_idx, val_idx = split_train_val(len(labels), cfg.val_size)
    x_train, y_train = (
        torch.from_numpy(pixels[train_idx]),
        torch.from_numpy(labels[train_idx].astype(np.int64)),
    )
    x_val, y_val = (
        torch.from_numpy(pixels[val_idx]),
        torch.from_numpy(labels[val_idx].astype(np.int64)),
    )
    # Validation stays MNIST's alone, so val_acc compares across versions.
    feedback = _feedback(cfg)
    x_train, y_train = _with_feedback(x_train, y_train, feedback, cfg.feedback_repeat)

    model = create_model(cfg.arch)
    ema = ema_model(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # What is validated, kept and shipped: the average when there is one.
    shipped = ema.module if ema is not None else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = -(-len(y_train) // cfg.batch_size)
    history: list[dict[str, float | int]] = []
    best_acc, best_state = -1.0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        plan = EpochPlan(
            cfg.precision == "bf16",
            epoch,
            cfg.epochs,
            cfg.batch_size,
            (epoch - 1) * batches,
            cfg.epochs * batches,
            cfg.lr,
            batch_every,
        )
        stats = train_one_epoch(
            model,
            optimizer,
            x_train,
            y_train,
            plan,
            aug=cfg.aug,
            gen=gen,
            reporter=reporter,
            should_stop=should_stop,
            ema=ema,
        )
        val_acc = accuracy(predict_logits(shipped, x_val), y_val)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(stats.train_loss, 6),
                "val_acc": round(val_acc, 6),
                "time_s": round(stats.time_s, 2),
                "samples_per_sec": round(stats.samples / stats.time_s, 1),
            }
        )
        reporter.on_epoch(
            EpochProgress(
                epoch,
                cfg.epochs,
                round(stats.train_loss, 6),
                round(val_acc, 6),
                round(stats.time_s, 2),
            )
        )
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(shipped.state_dict())
            reporter.on_best(BestProgress(epoch, round(val_acc, 6)))

    model.load_state_dict(best_state)
    val_logits = predict_logits(model, x_val)
    temperature = fit_temperature(val_logits, y_val)
    metrics: Metrics = {
        "history": history,
        "val_acc": round(best_acc, 6),
        "val_nll_before": round(nll(val_logits, y_val), 6),
        "val_nll_after": round(nll(val_logits, y_val, temperature), 6),
        "temperature": round(temperature, 6),
    }
    test_acc = _test_metrics(model, data_root, temperature, metrics)
    feedback_acc = _feedback_acc(model, feedback)
    if feedback is not None:
        metrics["feedback_acc"] = feedback_acc
        metrics["feedback_count"] = len(feedback.trained)
        metrics["feedback_holdout"] = len(feedback.held)
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    recipe = recipe_of(cfg)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        model_id=cfg.model_id,
        arch=cfg.arch,
        n_classes=10,
        version=run_id,
        created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        preprocess_hash=preprocess_hash(),
        val_acc=round(best_acc, 6),
        temperature=round(temperature, 6),
        training_recipe=recipe,
        training_seed=cfg.seed,
        training_epochs=cfg.epochs,
        test_acc=test_acc,
        recipe_hash=recipe_hash(recipe),
        run_id=run_id,
        parent_model_id=cfg.parent_model_id,
        request_id=cfg.request_id,
        entry_id=cfg.entry_id,
        feedback_count=len(feedback.trained) if feedback else 0,
        feedback_holdout=sorted(feedback.held.request_ids) if feedback else [],
        feedback_acc=feedback_acc,
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics["duration_s"] = round(time.perf_counter() - started, 2)
    directory = write_artifacts(model_dir, manifest, state, metrics)
    pruned = prune_runs(model_dir, cfg.model_id, keep=keep_runs, protect=frozenset({run_id}))
    log.info(
        "train_done",
        model_id=cfg.model_id,
        run_id=run_id,
        val_acc=best_acc,
        test_acc=test_acc,
        feedback_acc=feedback_acc,
        temperature=temperature,
        path=str(directory),
        pruned=len(pruned),
    )
    return TrainResult(manifest, directory, metrics, pruned, weights_sha256(state))


def _test_metrics(
    model: torch.nn.Module, data_root: Path, temperature: float, metrics: Metrics
) -> float | None:
    """Reported, never used for selection. Absent test files only cost the figure."""
    try:
        pixels, labels = preprocessed_mnist(data_root, "test")
    except DataMissingError as exc:
        log.warning("test_set_missing", reason=str(exc))
        return None
    y = torch.from_numpy(labels.astype(np.int64))
    logits = predict_logits(model, torch.from_numpy(pixels))
    metrics["test_ece_before"] = round(expected_calibration_error(torch.softmax(logits, 1), y), 6)
    metrics["test_ece_after"] = round(
        expected_calibration_error(torch.softmax(logits / temperature, 1), y), 6
    )
    metrics["test_nll_before"] = round(nll(logits, y), 6)
    metrics["test_nll_after"] = round(nll(logits, y, temperature), 6)
    return round(accuracy(logits, y), 6)
