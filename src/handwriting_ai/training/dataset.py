"""MNIST through the service's own preprocessing, cached once per data root and preprocess hash."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from handwriting_ai.data.mnist import Split, load_mnist
from handwriting_ai.errors import PreprocessingFailedError
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing import preprocess_gray, preprocess_hash

log = get_logger(__name__)
U8 = npt.NDArray[np.uint8]


def _preprocess_chunk(images: U8) -> tuple[U8, npt.NDArray[np.bool_]]:
    import cv2

    cv2.setNumThreads(1)
    out = np.zeros_like(images)
    ok = np.ones(len(images), dtype=bool)
    for i, image in enumerate(images):
        try:
            out[i] = preprocess_gray(image).pixels
        except PreprocessingFailedError:
            ok[i] = False
    return out, ok


def preprocess_all(images: U8, processes: int) -> tuple[U8, npt.NDArray[np.bool_]]:
    # A worker's training slot is a daemonic process, which may not start a pool of its own
    # (threads gain nothing here: the pipeline holds the GIL most of the time). It preprocesses
    # serially, once per data root: ~1.5 ms an image, then the cache serves every later job.
    if processes <= 1 or len(images) < 2000 or mp.current_process().daemon:
        return _preprocess_chunk(images)
    chunks = np.array_split(images, processes * 4)
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_preprocess_chunk, chunks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def cache_path(data_root: Path, split: Split) -> Path:
    return data_root / "cache" / f"mnist-{split}-{preprocess_hash()}.npz"


def preprocessed_mnist(data_root: Path, split: Split, *, download: bool = False) -> tuple[U8, U8]:
    """(pixels (N, 28, 28) uint8 as models see them, labels); refused images are dropped."""
    path = cache_path(data_root, split)
    if path.is_file():
        with np.load(path) as cached:
            return cached["pixels"], cached["labels"]
    images, labels = load_mnist(data_root, split, download=download)
    pixels, ok = preprocess_all(images, processes=os.cpu_count() or 1)
    if not ok.all():
        log.warning("preprocess_dropped", split=split, dropped=int((~ok).sum()))
    pixels, labels = pixels[ok], labels[ok]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, pixels=pixels, labels=labels)
    os.replace(tmp, path)
    log.info("preprocess_cached", split=split, path=str(path), samples=len(labels))
    return pixels, labels


def split_train_val(
    labels_count: int, val_size: int, *, split_seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A fixed split (its own seed, not the run's), so every run is selected on the same images."""
    order = np.random.default_rng(split_seed).permutation(labels_count)
    val_size = min(val_size, labels_count // 5)
    return np.sort(order[val_size:]), np.sort(order[:val_size])
