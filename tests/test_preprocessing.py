"""Preprocessing as plain functions on plain arrays: synthetic digits drawn with OpenCV."""

from __future__ import annotations

import io
import math
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from handwriting_ai.errors import (
    BadDimensionsError,
    InvalidImageError,
    PreprocessingFailedError,
    TooLargeError,
    UnsupportedMediaTypeError,
)
from handwriting_ai.preprocessing import (
    ImageLimits,
    Preprocessed,
    PreprocessOptions,
    decode_image,
    preprocess_gray,
    preprocess_hash,
)
from handwriting_ai.preprocessing.decode import check_media_type
from handwriting_ai.preprocessing.pipeline import PARAMS
from helpers import U8, draw_seven, encoded, jpeg_bytes, paper, png_bytes, seven

LIMITS = ImageLimits(max_bytes=2 * 1024 * 1024, max_side_px=1024, max_pixels=25_000_000)


def centre_of_mass(pixels: U8) -> tuple[float, float]:
    m = cv2.moments(pixels.astype(np.float32))
    return m["m10"] / m["m00"], m["m01"] / m["m00"]


def similarity(a: Preprocessed, b: Preprocessed) -> float:
    x, y = a.pixels.ravel().astype(np.float64), b.pixels.ravel().astype(np.float64)
    return float(np.corrcoef(x, y)[0, 1])


def slanted_one(degrees: float) -> U8:
    canvas = paper()
    dx = round(70 * math.tan(math.radians(degrees)))
    cv2.line(canvas, (100 - dx, 30), (100 + dx, 170), 20, 12, cv2.LINE_AA)
    return canvas


@pytest.fixture(scope="module")
def clean() -> Preprocessed:
    return preprocess_gray(seven())


# --------------------------------------------------------------------------- the output


def test_output_shape_dtype_and_normalisation(clean: Preprocessed) -> None:
    assert clean.tensor.shape == (28, 28)
    assert clean.tensor.dtype == np.float32
    assert clean.pixels.shape == (28, 28)
    assert clean.pixels.dtype == np.uint8
    mean, std = float(PARAMS["mean"]), float(PARAMS["std"])
    expected = (clean.pixels.astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_allclose(clean.tensor, expected, rtol=0, atol=1e-6)
    assert clean.pixels.max() == 255
    # The digit fits the 20x20 box: a 4-pixel black border remains (within a 1 px centring shift).
    ys, xs = np.nonzero(clean.pixels)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 20


def test_centre_of_mass_is_centred(clean: Preprocessed) -> None:
    cx, cy = centre_of_mass(clean.pixels)
    assert abs(cx - 13.5) <= 1.0
    assert abs(cy - 13.5) <= 1.0


def test_center_false_keeps_the_box_centre() -> None:
    boxed = preprocess_gray(seven(), PreprocessOptions(center=False))
    ys, xs = np.nonzero(boxed.pixels)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(13.5, abs=1.0)
    assert (xs.min() + xs.max()) / 2 == pytest.approx(13.5, abs=1.0)


def test_is_deterministic() -> None:
    a, b = preprocess_gray(seven()), preprocess_gray(seven())
    assert np.array_equal(a.tensor, b.tensor)


# --------------------------------------------------------------------------- polarity


def test_dark_ink_on_paper_is_not_inverted(clean: Preprocessed) -> None:
    assert clean.inverted is False


def test_white_on_black_is_auto_inverted(clean: Preprocessed) -> None:
    chalk = preprocess_gray(255 - seven())
    assert chalk.inverted is True
    assert similarity(chalk, clean) > 0.99


def test_invert_override_is_respected(clean: Preprocessed) -> None:
    chalk = 255 - seven()
    forced = preprocess_gray(chalk, PreprocessOptions(invert=True))
    assert forced.inverted is True
    assert np.array_equal(forced.pixels, preprocess_gray(chalk).pixels)
    wrong = preprocess_gray(chalk, PreprocessOptions(invert=False))
    assert wrong.inverted is False
    # The caller said so: the paper is read as the ink, a clearly different image (a faithful
    # reading scores > 0.99).
    assert similarity(wrong, clean) < 0.9


# --------------------------------------------------------------------------- real-world noise


def test_gradient_shadow_is_normalised(clean: Preprocessed) -> None:
    shade = np.linspace(1.0, 0.4, 200, dtype=np.float32)[None, :]
    shadowed = (seven().astype(np.float32) * shade).astype(np.uint8)
    out = preprocess_gray(shadowed)
    assert out.inverted is False
    assert similarity(out, clean) > 0.95


def test_specks_are_dropped(clean: Preprocessed) -> None:
    speckled = seven()
    for x, y in [(15, 15), (185, 20), (20, 180), (180, 185)]:
        cv2.circle(speckled, (x, y), 2, 30, -1)
    out = preprocess_gray(speckled)
    assert out.components_dropped >= 1
    assert out.components_kept == 1
    assert similarity(out, clean) > 0.99


def test_ruled_lines_are_removed(clean: Preprocessed) -> None:
    ruled = paper()
    for y in range(20, 200, 30):
        cv2.line(ruled, (0, y), (199, y), 150, 2)
    out = preprocess_gray(draw_seven(ruled))
    assert out.lines_removed >= 1
    assert similarity(out, clean) > 0.95
    cx, cy = centre_of_mass(out.pixels)
    assert abs(cx - 13.5) <= 1.0
    assert abs(cy - 13.5) <= 1.0


# --------------------------------------------------------------------------- deskew


@pytest.mark.parametrize("degrees", [30.0, -30.0, 20.0])
def test_deskew_is_capped(degrees: float) -> None:
    out = preprocess_gray(slanted_one(degrees))
    assert abs(out.deskew_deg) == float(PARAMS["deskew_max_deg"])
    assert math.copysign(1.0, out.deskew_deg) == math.copysign(1.0, degrees)


def test_small_slant_is_corrected_fully() -> None:
    out = preprocess_gray(slanted_one(5.0))
    assert 3.0 < out.deskew_deg < 7.0


def test_round_shapes_are_not_deskewed() -> None:
    ring = paper()
    cv2.circle(ring, (100, 100), 50, 20, 12, cv2.LINE_AA)
    assert preprocess_gray(ring).deskew_deg == 0.0


# --------------------------------------------------------------------------- no digit


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_image_fails(value: int) -> None:
    with pytest.raises(PreprocessingFailedError):
        preprocess_gray(paper(100, value))


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (2, 2), (3, 1024)])
def test_degenerate_sizes_fail_cleanly(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    try:
        out = preprocess_gray(gray)
    except PreprocessingFailedError:
        return
    assert out.pixels.shape == (28, 28)


# --------------------------------------------------------------------------- the hash


def test_preprocess_hash_is_stable_and_short() -> None:
    first = preprocess_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert preprocess_hash() == first


def test_preprocess_hash_follows_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    before = preprocess_hash()
    monkeypatch.setitem(PARAMS, "box_px", 22)
    assert preprocess_hash() != before


# --------------------------------------------------------------------------- decoding


def test_decode_png_and_jpeg() -> None:
    gray = seven()
    assert np.array_equal(decode_image(png_bytes(gray), LIMITS), gray)
    jpeg = decode_image(jpeg_bytes(gray), LIMITS)
    assert jpeg.shape == gray.shape
    assert float(np.abs(jpeg.astype(np.float32) - gray).mean()) < 3.0


def test_decode_applies_exif_orientation() -> None:
    gray = seven()
    stored = np.ascontiguousarray(np.rot90(gray, k=1))
    upright = decode_image(jpeg_bytes(stored, orientation=6), LIMITS)
    assert upright.shape == gray.shape
    assert float(np.abs(upright.astype(np.float32) - gray).mean()) < 3.0


def test_transparent_png_is_composited_on_white() -> None:
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[20:40, 28:32] = (0, 0, 0, 255)  # black stroke, the rest fully transparent (and black)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    gray = decode_image(buf.getvalue(), LIMITS)
    assert gray[0, 0] == 255
    assert gray[30, 30] == 0


def test_white_strokes_on_transparent_canvas_read_as_ink() -> None:
    rgba = np.zeros((60, 60, 4), dtype=np.uint8)
    rgba[20:40, 28:32] = (255, 255, 255, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    gray = decode_image(buf.getvalue(), LIMITS)
    assert gray[0, 0] == 255
    assert gray[30, 30] == 0


def test_sixteen_bit_png_is_scaled() -> None:
    deep = (seven().astype(np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    gray = decode_image(buf.getvalue(), LIMITS)
    assert gray.dtype == np.uint8
    assert int(gray.max()) == 255


@pytest.mark.parametrize(
    ("data", "declared", "error"),
    [
        (b"GIF89a" + bytes(20), "image/png", UnsupportedMediaTypeError),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/jpeg", UnsupportedMediaTypeError),
        (b"plain text", "text/plain", UnsupportedMediaTypeError),
        (b"plain text", None, UnsupportedMediaTypeError),
        (b"plain text", "image/png", InvalidImageError),
        (b"plain text", "image/jpeg; charset=x", InvalidImageError),
    ],
)
def test_media_type_is_judged_by_content(
    data: bytes, declared: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        check_media_type(data, declared)


def test_media_type_accepts_png_and_jpeg_whatever_declared() -> None:
    assert check_media_type(png_bytes(seven(32)), "text/plain") == "PNG"
    assert check_media_type(jpeg_bytes(seven(32)), None) == "JPEG"


def test_bmp_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="BMP"):
        decode_image(encoded(seven(32), "BMP"), LIMITS, "image/png")


def test_limits() -> None:
    tight = ImageLimits(max_bytes=1000, max_side_px=64, max_pixels=3000)
    with pytest.raises(TooLargeError):
        decode_image(bytes(1001), tight)
    with pytest.raises(TooLargeError):
        decode_image(png_bytes(paper(60, 255)), tight)  # 3600 pixels
    with pytest.raises(BadDimensionsError):
        decode_image(png_bytes(np.full((10, 65), 255, dtype=np.uint8)), tight)


def stroke_width(pixels: U8) -> float:
    """Mean stroke width in pixels: twice the ink area over its outline length."""
    mask = (pixels > 127).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    return 2.0 * float(mask.sum()) / perimeter if perimeter else 0.0


@pytest.mark.parametrize(("side", "pen"), [(600, 2), (800, 2), (1000, 3)])
def test_a_fine_pen_on_a_big_page_gets_mnist_like_strokes(side: int, pen: int) -> None:
    """A 2 px pen on a big page would shrink to a hairline in 28x28: strokes are thickened to
    about the width of a bold drawing's (the model was trained on MNIST's)."""
    bold = stroke_width(preprocess_gray(seven()).pixels)
    fine = preprocess_gray(draw_seven(paper(side), thickness=pen))
    assert fine.pixels.max() == 255
    assert stroke_width(fine.pixels) >= 0.75 * bold


def slant_deg(pixels: U8) -> float:
    """The slant of a shape from its second-order moments (0: upright)."""
    m = cv2.moments(pixels.astype(np.float32))
    return math.degrees(math.atan(m["mu11"] / m["mu02"]))


@pytest.mark.parametrize("degrees", [6.0, -6.0, 9.0])
def test_deskew_leaves_the_stroke_upright(degrees: float) -> None:
    """The shear goes against the slant: what the model sees is upright, not slanted twice."""
    assert abs(slant_deg(preprocess_gray(slanted_one(degrees), PreprocessOptions()).pixels)) < 2.5


def test_the_strokes_soft_rim_is_kept_all_round() -> None:
    """MNIST boxed its digits with their grey edges: the output's outermost rows and columns are
    the faint rim, not strokes cut where the threshold's mask ends (`pp-7` cut them there, and
    read MNIST's test set 0.06 points worse for it)."""
    for label in range(10):
        canvas = np.zeros((112, 112), np.uint8)
        cv2.putText(
            canvas, str(label), (28, 92), cv2.FONT_HERSHEY_SIMPLEX, 3.0, 255, 9, cv2.LINE_AA
        )
        # A soft edge a few pixels wide, as MNIST's digits have.
        blurred: U8 = np.asarray(cv2.GaussianBlur(canvas, (0, 0), 3.0), np.uint8)
        pixels = preprocess_gray(blurred).pixels
        ys, xs = np.nonzero(pixels)
        outermost = (pixels[ys.min()], pixels[ys.max()], pixels[:, xs.min()], pixels[:, xs.max()])
        assert max(int(line.max()) for line in outermost) < 128, label
