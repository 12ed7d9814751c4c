"""Polarity: is the ink dark on light paper, or light on a dark board? Decided per upload.

The cases the border-against-range rule got wrong (issue 15): a thin ballpoint line covers under
1% of a photo, so the image's range is all paper and a vignette puts the border at its dark
end; a hard shadow over the border does the same. Drawn by `ops/make_realistic_set.py` from the
synthetic MNIST look-alike, beside the cases that rule got right and must stay right: MNIST's
white on black, scans of dark on white at any size, chalk on a board.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.preprocessing import ImageLimits, decode_image, preprocess_gray
from helpers import U8, load_script

SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "make_realistic_set.py"
LIMITS = ImageLimits(max_bytes=12 << 20, max_side_px=16384, max_pixels=64_000_000)


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script(SCRIPT, "make_realistic_set_polarity")


@pytest.fixture(scope="module")
def digits() -> U8:
    images, _ = render_digits(60, 23)
    return images


def inverted_count(script: ModuleType, kind: str, digits: U8, seed: int) -> int:
    rng = np.random.default_rng(seed)
    make = script.KIND_FUNCS[kind]
    return sum(preprocess_gray(decode_image(make(d, rng)[0], LIMITS)).inverted for d in digits)


@pytest.mark.parametrize(
    ("kind", "count"), [("hard_shadow", 60), ("squared_paper", 60), ("photo_blue_ink", 60)]
)
def test_dark_ink_under_shadows_and_on_lined_paper_is_not_inverted(
    script: ModuleType, digits: U8, kind: str, count: int
) -> None:
    assert inverted_count(script, kind, digits[:count], seed=1) == 0


@pytest.mark.slow
def test_a_thin_ballpoint_line_in_a_12_mp_photo_is_not_inverted(
    script: ModuleType, digits: U8
) -> None:
    assert inverted_count(script, "phone_ballpoint", digits[:16], seed=2) == 0


@pytest.mark.parametrize("kind", ["chalkboard", "chalk_thin"])
def test_chalk_on_a_board_is_inverted(script: ModuleType, digits: U8, kind: str) -> None:
    assert inverted_count(script, kind, digits[:40], seed=3) == 40


@pytest.mark.parametrize("side", [28, 56, 112, 200])
def test_bold_scans_keep_their_polarity_at_any_size(digits: U8, side: int) -> None:
    """Bold strokes fill MNIST-like frames: a median filter's notion of paper fails there."""
    for digit in digits:
        light_on_dark = cv2.resize(digit, (side, side), interpolation=cv2.INTER_LINEAR)
        assert preprocess_gray(light_on_dark).inverted
        assert not preprocess_gray(np.ascontiguousarray(255 - light_on_dark)).inverted
