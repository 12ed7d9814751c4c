"""A learnable MNIST look-alike for tests and benchmarks on machines without the real files:
digits drawn with an OpenCV font, white on black, jittered in position, size and thickness."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


def render_digits(count: int, seed: int) -> tuple[U8, U8]:
    """(images (count, 28, 28) uint8, labels (count,) uint8), balanced over 0-9, deterministic."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        scale = float(rng.uniform(0.7, 0.9))
        thickness = int(rng.integers(2, 4))
        x, y = int(rng.integers(5, 10)), int(rng.integers(20, 25))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(images[i], str(label), (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    return images, labels
