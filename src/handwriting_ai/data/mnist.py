"""MNIST under `<data_root>/mnist` in torchvision's layout (`MNIST/raw/*-idx?-ubyte[.gz]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from handwriting_ai.data.idx import read_idx

Split = Literal["train", "test"]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataMissingError(FileNotFoundError):
    """A user error: the data set is not where the settings say, and no download was allowed."""


def mnist_root(data_root: Path) -> Path:
    return data_root / "mnist"


def raw_dir(data_root: Path) -> Path:
    return mnist_root(data_root) / "MNIST" / "raw"


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(
    data_root: Path, split: Split, *, download: bool = False
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Images (N, 28, 28) white-on-black and labels (N,). Downloads only when asked to."""
    folder = raw_dir(data_root)
    images_stem, labels_stem = _FILES[split]
    images, labels = _find(folder, images_stem), _find(folder, labels_stem)
    if (images is None or labels is None) and download:
        from torchvision.datasets import MNIST

        MNIST(str(mnist_root(data_root)), train=split == "train", download=True)
        images, labels = _find(folder, images_stem), _find(folder, labels_stem)
    if images is None or labels is None:
        raise DataMissingError(
            f"MNIST {split} files not found in {folder} (expected {images_stem}[.gz] and "
            f"{labels_stem}[.gz]); copy them there or allow the download"
        )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataMissingError(
            f"MNIST {split} files in {folder} have mismatched shapes {x.shape} / {y.shape}"
        )
    return x, y
