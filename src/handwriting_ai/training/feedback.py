"""Corrections as training data: the file a `use_feedback` run reads, the held-back split by a hash
of each read's request_id, and the repeated copies mixed into the MNIST training tensors.

The split depends on each request_id alone (plus a fallback when the hash would leave one side
empty), so a correction held back by one run is held back by every run with the same fraction:
versions are measured on the same held-back samples, never on ones they trained on.

The file is an `.npz` with `pixels` (N, 28, 28) uint8 (the preprocessed samples, exactly what
`preprocessed_mnist` returns), `labels` (N,) int64 and `request_ids` (N,) text; written by the
worker, read by its training child.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from attrs import frozen

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
SIDE = 28
_HASH_SPAN = 2**64


class FeedbackFileError(ValueError):
    """The corrections file is not what a worker writes."""


@frozen(eq=False)
class FeedbackSet:
    """Corrections, one per request_id: the samples, their right labels, the reads' ids."""

    pixels: U8
    labels: I64
    request_ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.request_ids)


def feedback_set(
    pixels: Sequence[U8] | U8, labels: Sequence[int], request_ids: Sequence[str]
) -> FeedbackSet:
    """Checked and stacked: (N, 28, 28) uint8, labels 0..9, distinct request_ids."""
    stacked = np.asarray(pixels, dtype=np.uint8).reshape(-1, SIDE, SIDE)
    ids = tuple(request_ids)
    label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(stacked) == len(label_array) == len(ids):
        raise FeedbackFileError(
            f"{len(stacked)} samples, {len(label_array)} labels, {len(ids)} request_ids"
        )
    if len(set(ids)) != len(ids):
        raise FeedbackFileError("request_ids repeat: one correction per read")
    if len(label_array) and not ((label_array >= 0) & (label_array <= 9)).all():
        raise FeedbackFileError("labels must be digits 0..9")
    return FeedbackSet(stacked, label_array, ids)


def save_feedback(path: Path, corrections: FeedbackSet) -> Path:
    """Written whole or not at all (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        pixels=corrections.pixels,
        labels=corrections.labels,
        request_ids=np.asarray(corrections.request_ids, dtype=np.str_),
    )
    os.replace(tmp, path)
    return path


def load_feedback(path: Path) -> FeedbackSet:
    """The file `save_feedback` wrote; `FeedbackFileError` for anything else (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            pixels = data["pixels"]
            labels = data["labels"]
            ids = data["request_ids"]
    except (OSError, KeyError, ValueError) as exc:
        raise FeedbackFileError(f"unreadable corrections file {path}: {exc}") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (SIDE, SIDE):
        raise FeedbackFileError(f"pixels must be (N, 28, 28) uint8, got {pixels.shape}")
    return feedback_set(pixels, [int(v) for v in labels], [str(v) for v in ids])


def holdout_score(request_id: str) -> float:
    """A read's place in [0, 1): the first 8 bytes of sha256(request_id), big-endian."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPAN


def split_holdout(request_ids: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """(indices trained on, indices held back), each ascending. A correction is held back when
    its `holdout_score` is below `fraction`. With two or more corrections and a fraction above 0,
    at least one is held back (the lowest score) and at least one trained on (the highest)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the held-back fraction must be within [0, 1), got {fraction}")
    scores = [holdout_score(rid) for rid in request_ids]
    held = {i for i, score in enumerate(scores) if score < fraction}
    if len(scores) >= 2 and fraction > 0:
        by_score = sorted(range(len(scores)), key=lambda i: (scores[i], request_ids[i]))
        if not held:
            held.add(by_score[0])
        if len(held) == len(scores):
            held.discard(by_score[-1])
    trained = [i for i in range(len(scores)) if i not in held]
    return trained, sorted(held)


def subset(corrections: FeedbackSet, indices: Sequence[int]) -> FeedbackSet:
    index = np.asarray(indices, dtype=np.int64)
    return FeedbackSet(
        corrections.pixels[index],
        corrections.labels[index],
        tuple(corrections.request_ids[i] for i in indices),
    )


def repeated(corrections: FeedbackSet, repeat: int) -> tuple[U8, I64]:
    """The training corrections `repeat` times over (each epoch then sees every one `repeat`
    times, shuffled among the MNIST samples): their weight against 50 000 MNIST images."""
    if repeat < 1:
        raise ValueError(f"repeat must be 1 or more, got {repeat}")
    return np.tile(corrections.pixels, (repeat, 1, 1)), np.tile(corrections.labels, repeat)
