"""Array types shared by the preprocessing steps, and the one narrowing of OpenCV's results."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from cv2.typing import MatLike

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def as_u8(image: MatLike) -> U8:
    """OpenCV returns `MatLike`; the images we pass it are uint8, so this never copies."""
    return np.asarray(image, dtype=np.uint8)
