"""Array types shared by the preprocessing steps, and the one narrowing of OpenCV's results."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from cv2.typing import MatLike

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def as_u8(image: MatLike) -> U8:
    """OpenCV returns `MatLike`; the images we pass it are uint8, so this never copies."""
    return np.asarray(image, dtype=np.uint8)


def as_f32(image: MatLike | F32 | npt.NDArray[np.float64]) -> F32:
    """The float32 counterpart of `as_u8` (a copy only if `image` is not float32 already)."""
    return np.asarray(image, dtype=np.float32)


def percentiles_u8(
    values: U8, qs: tuple[float, ...], dtype: type[np.float32] | None = None
) -> list[float]:
    """Exactly `[float(np.percentile(values.astype(dtype), q)) for q in qs]` for uint8 `values`,
    from one 256-bin histogram instead of a partition (several times faster on our images).

    numpy's linear method: index (n - 1) * q / 100 into the sorted values, then its own lerp,
    `a + d * g` (or `b - d * (1 - g)` from g = 0.5 up), in the array's dtype (`dtype`: float32
    for a float32 array; None for the uint8 array itself). Same maths, so the same bits: the
    models were trained on this output and `preprocess_hash` promises it does not change.
    """
    n = int(values.size)
    if n == 0:
        raise ValueError("percentile of an empty array")
    cum = np.cumsum(_histogram(values))
    kind = np.uint8 if dtype is None else dtype
    out = []
    for q in qs:
        virtual = (n - 1) * (q / 100)
        if virtual >= n - 1:  # numpy takes the last value for both ends
            below, above, gamma = n - 1, n - 1, 0.0
        else:
            below = math.floor(virtual)
            above, gamma = below + 1, virtual - below
        lo, hi = np.searchsorted(cum, [below, above], side="right")
        a, b = kind(lo), kind(hi)
        diff = b - a
        out.append(float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma))
    return out


# OpenCV counts in float32, exact up to 2**24; np.bincount widens every value to int64 first
# (a 256x256 image: 79 us against 17 us). Small arrays stay with bincount (less call overhead).
_CV_HIST_MIN, _CV_HIST_MAX = 4096, 1 << 24


def _histogram(values: U8) -> npt.NDArray[np.int64]:
    """The 256-bin count of uint8 `values`, exactly."""
    if not _CV_HIST_MIN <= values.size < _CV_HIST_MAX:
        return np.bincount(values.ravel(), minlength=256)
    flat = np.ascontiguousarray(values).reshape(1, -1)  # one row: a column is 2x slower
    counts = cv2.calcHist([flat], [0], None, [256], [0, 256])
    return np.asarray(counts, dtype=np.float32).ravel().astype(np.int64)
