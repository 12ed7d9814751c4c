"""A tiny, learnable MNIST look-alike written as real IDX files in torchvision's layout.

Digits are rendered with an OpenCV font, jittered in position, size and thickness, white on
black like MNIST, so a tiny model learns them in one short epoch.
"""

from __future__ import annotations

from multiprocessing import Queue
from pathlib import Path

import numpy as np
import numpy.typing as npt

from handwriting_ai.data.idx import write_idx
from handwriting_ai.data.mnist import raw_dir
from handwriting_ai.data.synthetic import render_digits

U8 = npt.NDArray[np.uint8]


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
