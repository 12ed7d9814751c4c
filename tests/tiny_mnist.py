"""A tiny, learnable MNIST look-alike written as real IDX files in torchvision's layout.

Digits are rendered with an OpenCV font, jittered in position, size and thickness, white on
black like MNIST, so a tiny model learns them in one short epoch.
"""

from __future__ import annotations

from multiprocessing import Queue
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from handwriting_ai.data.idx import write_idx
from handwriting_ai.data.mnist import raw_dir

U8 = npt.NDArray[np.uint8]


def render_digits(count: int, seed: int) -> tuple[U8, U8]:
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        scale = float(rng.uniform(0.7, 0.9))
        thickness = int(rng.integers(2, 4))
        x, y = int(rng.integers(5, 10)), int(rng.integers(20, 25))
        cv2.putText(
            images[i],
            str(label),
            (x, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            255,
            thickness,
            cv2.LINE_AA,
        )
    return images, labels


def write_tiny_mnist(data_root: Path, *, train: int = 300, test: int = 100, seed: int = 0) -> Path:
    folder = raw_dir(data_root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", train, 0), ("t10k", test, 1)):
        images, labels = render_digits(count, seed + offset)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return data_root


def preprocess_in_a_daemon(images: U8, results: Queue[object]) -> None:
    """Runs in a daemonic process, like a worker's training slot: the preprocessing result, or
    the error it raised as text."""
    from handwriting_ai.training.dataset import preprocess_all

    try:
        results.put(preprocess_all(images, processes=2))
    except (AssertionError, OSError, RuntimeError) as exc:  # the test shows it
        results.put(f"{type(exc).__name__}: {exc}")
