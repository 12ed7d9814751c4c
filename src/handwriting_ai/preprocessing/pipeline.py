"""Grayscale image to the MNIST-style 28x28 input: one function shared by training and inference.

Steps: working size, polarity (auto or forced), illumination normalisation, ruled-line removal,
Otsu, grouping of the components that make up the digit, moment deskew, aspect-preserving fit
into the 20x20 box, centre of mass at the centre of 28x28, MNIST normalisation. There are no
fallbacks: an image with no digit raises `PreprocessingFailedError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
from attrs import frozen

from handwriting_ai.errors import PreprocessingFailedError
from handwriting_ai.preprocessing.arrays import F32, U8, as_f32, as_u8, percentiles_u8
from handwriting_ai.preprocessing.segment import (
    Grouping,
    group_digit_components,
    remove_ruled_lines,
)

if TYPE_CHECKING:
    from cv2.typing import MatLike

# Every value that changes what a model sees lives here and feeds `preprocess_hash`.
PARAMS: dict[str, float | int | str] = {
    "version": "pp-8",
    "work_max_side": 256,
    "work_min_side": 112,
    "background_kernel_frac": 0.2,
    "polarity_thumb_px": 128,
    "polarity_blur_frac": 0.125,
    "polarity_tail_pct": 0.5,
    "min_contrast": 40,
    "threshold_peak_frac": 0.35,
    "min_stroke_frac": 0.1,
    # The anti-aliased rim kept around the thresholded strokes, in pixels of the 28 px output.
    "rim_px": 1.5,
    "deskew_max_deg": 10.0,
    "deskew_min_deg": 1.0,
    "deskew_min_elongation": 1.2,
    "box_px": 20,
    "canvas_px": 28,
    "mean": 0.1307,
    "std": 0.3081,
}
_MEAN = float(PARAMS["mean"])
_STD = float(PARAMS["std"])
_BOX = int(PARAMS["box_px"])
_CANVAS = int(PARAMS["canvas_px"])


def preprocess_hash() -> str:
    """Stable signature of the preprocessing: manifests carry it, the service refuses a mismatch."""
    blob = json.dumps(PARAMS, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@frozen
class PreprocessOptions:
    invert: bool | None = None  # None: decide from the background
    center: bool = True  # centre of mass (MNIST) rather than the bounding-box centre


@frozen
class Preprocessed:
    tensor: F32  # (28, 28), MNIST-normalised
    pixels: U8  # (28, 28), ink bright on black: what the model saw
    inverted: bool
    deskew_deg: float
    components_kept: int
    components_dropped: int
    lines_removed: int


@frozen
class _Located:
    ink: U8
    grouping: Grouping
    lines_removed: int


def _locate(paper: U8) -> _Located:
    """Find the digit in dark-ink-on-light `paper` at working resolution."""
    ink = _normalise_illumination(_working_size(paper))
    # Blur before judging: lone noisy pixels must neither pass the contrast test nor sway Otsu.
    smooth = as_u8(cv2.GaussianBlur(ink, (3, 3), 0))
    if int(smooth.max()) < int(PARAMS["min_contrast"]):
        raise PreprocessingFailedError("No digit found: the image has no contrasting strokes.")
    otsu, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    # Otsu alone splits grain from paper when the digit is small and faint: never go below a
    # fraction of the strongest ink.
    (peak,) = percentiles_u8(smooth, (99.9,))
    floor = max(float(PARAMS["min_contrast"]) / 2, float(PARAMS["threshold_peak_frac"]) * peak)
    _, mask = cv2.threshold(smooth, max(float(otsu), floor), 255, cv2.THRESH_BINARY)
    mask, lines_removed = remove_ruled_lines(as_u8(mask))
    grouping = group_digit_components(mask, ink)
    if grouping is None:
        raise PreprocessingFailedError("No digit found after segmentation.")
    return _Located(ink=ink, grouping=grouping, lines_removed=lines_removed)


def preprocess_gray(gray: U8, options: PreprocessOptions = PreprocessOptions()) -> Preprocessed:
    inverted = _dark_background(gray) if options.invert is None else options.invert
    paper = as_u8(cv2.bitwise_not(gray)) if inverted else gray
    found = _locate(paper)
    ink, grouping, lines_removed = found.ink, found.grouping, found.lines_removed
    # The threshold's mask ends inside the strokes' soft rim: keep the rim, all round, as
    # MNIST's own 20 px box does (its digits were scaled with their grey edges).
    _, _, w, h = grouping.bbox
    rim = max(1, round(float(PARAMS["rim_px"]) * max(w, h) / _BOX))
    soft = _soft_digit(ink, grouping.mask, rim)
    top, bottom, left, right = _extent(soft, grouping.bbox, rim)
    digit = soft[top:bottom, left:right]
    digit = _thicken_thin_strokes(digit, grouping.mask[top:bottom, left:right])
    digit, angle = _deskew(digit)
    pixels = _fit_and_center(digit, center=options.center)
    tensor = ((pixels.astype(np.float32) / 255.0) - _MEAN) / _STD
    return Preprocessed(
        tensor=tensor.astype(np.float32),
        pixels=pixels,
        inverted=inverted,
        deskew_deg=round(angle, 2),
        components_kept=grouping.kept,
        components_dropped=grouping.dropped,
        lines_removed=lines_removed,
    )


def _working_size(gray: U8) -> U8:
    """Big photos shrink (speed); tiny images grow, so kernel sizes stay meaningful."""
    h, w = gray.shape
    side = max(h, w)
    hi, lo = int(PARAMS["work_max_side"]), int(PARAMS["work_min_side"])
    if side > hi:
        scale = hi / side
        interp = cv2.INTER_AREA
        # Min-pool first (dark ink on light paper by now) so thin pen strokes survive the shrink:
        # each k x k block becomes its darkest pixel, and only the small rest is area-averaged.
        k = int(1 / scale)
        if k >= 2:
            # Smooth first, or paper grain would be min-pooled into fake ink.
            gray = as_u8(cv2.GaussianBlur(gray, (3, 3), 0))
            eroded = cv2.erode(gray, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
            # erode's window is centred: the pixel at (k//2, k//2) of a block holds its minimum
            gray = as_u8(np.ascontiguousarray(eroded[k // 2 :: k, k // 2 :: k]))
            h, w = gray.shape
            scale = hi / max(h, w)
            if scale >= 1:
                return gray
    elif side < lo:
        scale = lo / side
        interp = cv2.INTER_LINEAR
    else:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return as_u8(cv2.resize(gray, size, interpolation=interp))


def _thumbnail(gray: U8) -> U8:
    """At most `polarity_thumb_px` on the long side: plenty for a polarity vote, and cheap."""
    h, w = gray.shape
    side = int(PARAMS["polarity_thumb_px"])
    if max(h, w) <= side:
        return gray
    work = gray
    step = max(h, w) // (2 * side)
    if step >= 2:  # a cheap subsample first: a full-size area resize costs milliseconds
        work = np.ascontiguousarray(work[step // 2 :: step, step // 2 :: step])
        h, w = work.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return as_u8(cv2.resize(work, size, interpolation=cv2.INTER_AREA))


def _shrink(image: U8, factor: int) -> U8:
    h, w = image.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return as_u8(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def _stretch(image: MatLike, size: tuple[int, int]) -> F32:
    return as_f32(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))


def _dark_background(gray: U8) -> bool:
    """Whether the ink is light on dark: four votes on a thumbnail, summed with equal weights.

    Ink is what departs furthest from the paper around it, and covers less of the image than the
    paper does; each vote asks which way the extreme departures go (> 0: dark ink). Comparing
    the border with the image's range, as before, failed on thin pen lines (they move neither
    end of the range) under vignettes and hard shadows: 146 of 8,800 test images.
    - two tails: divide by a wide blur (vignettes and gradients gone), then ask whether the
      darkest or the brightest 0.5% reaches further from the median, once as a plain ratio
      (bounded below by 0: sure of dark ink) and once as a log ratio (unbounded on both sides:
      sure of light ink on black);
    - two residuals: subtract a median filter (a quarter and a half of the thumbnail wide) and
      weigh the residuals past half the strongest, dark against light. A shadow's edge departs
      both ways about equally, a stroke one way; strokes as wide as the filter mislead it.
    """
    thumb = _thumbnail(gray)
    h, w = thumb.shape
    # The backgrounds are smooth, so they are estimated at a fraction of the thumbnail's size
    # and stretched back: the same votes for ~0.1 ms instead of ~0.9 ms.
    sigma = max(h, w) / 4 * float(PARAMS["polarity_blur_frac"])
    wide = _stretch(cv2.GaussianBlur(as_f32(_shrink(thumb, 4)), (0, 0), sigma), (w, h))
    pixels = as_f32(thumb)
    ratio = as_f32(pixels / np.maximum(wide, np.float32(1.0)))
    log_ratio = as_f32(cv2.log(as_f32((pixels + np.float32(4.0)) / (wide + np.float32(4.0)))))
    tail = float(PARAMS["polarity_tail_pct"])
    votes = [
        _tail_vote(_saturate(ratio, 128.0, 0.0), tail) / 128.0,  # paper ~128
        _tail_vote(_saturate(log_ratio, 32.0, 128.0), tail) / 32.0,
    ]
    fracs = (0.25, 0.5)
    half = None
    for i, frac in enumerate(fracs):
        # A residual vote lies strictly within (-1, 1): once the sum so far is at least as far
        # from 0 as the votes left, they cannot change the answer (scans and drawings: the
        # tails alone decide; ~0.4 ms saved).
        if abs(sum(votes)) >= len(fracs) - i:
            break
        half = _shrink(thumb, 2) if half is None else half
        k = int(max(half.shape) * frac) | 1
        median = _stretch(cv2.medianBlur(half, k), (w, h))
        votes.append(_residual_vote(as_f32(pixels - median), tail))
    return sum(votes) < 0


def _saturate(values: F32, scale: float, offset: float) -> U8:
    return as_u8(np.clip(values * np.float32(scale) + np.float32(offset), 0, 255))


def _tail_vote(flat: U8, tail: float) -> float:
    """How much further the dark tail of `flat` reaches from its median than the bright one."""
    lo, middle, hi = percentiles_u8(flat, (tail, 50, 100 - tail))
    return (middle - lo) - (hi - middle)


def _residual_vote(residual: F32, tail: float) -> float:
    """Dark against light mass of the residuals past half the strongest: in [-1, 1]."""
    (strongest,) = percentiles_u8(_saturate(np.abs(residual), 1.0, 0.0), (100 - tail,))
    cut = np.float32(max(8.0, strongest / 2))
    dark = float(np.maximum(-residual - cut, 0).sum())
    light = float(np.maximum(residual - cut, 0).sum())
    return (dark - light) / (dark + light + 1.0)


def _normalise_illumination(paper: U8) -> U8:
    """Divide by a background estimate (a closing wipes out strokes, keeps shadows' hard edges)."""
    h, w = paper.shape
    k = max(5, int(min(h, w) * float(PARAMS["background_kernel_frac"])) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    background = cv2.morphologyEx(paper, cv2.MORPH_CLOSE, kernel)
    background = cv2.blur(background, (3, 3))
    ratio = paper.astype(np.float32) / np.maximum(background.astype(np.float32), 1.0)
    ink = np.clip((1.0 - ratio) * 255.0 * 1.25, 0, 255)
    return ink.astype(np.uint8)


def _soft_digit(ink: U8, group_mask: U8, rim: int) -> U8:
    """Keep anti-aliased stroke edges (`rim` px past the mask); stretch so the stroke core is
    full-white like MNIST."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
    near = cv2.dilate(group_mask, disc)
    kept = np.where(near > 0, ink, 0).astype(np.float32)
    # `kept` is `ink` wherever the mask is set; its float32 dtype decides numpy's rounding.
    inside = ink[group_mask > 0]
    core = percentiles_u8(inside, (90,), np.float32)[0] if inside.size else 255.0
    (floor,) = percentiles_u8(ink, (50,))
    stretched = (kept - floor) / max(core - floor, 1.0) * 255.0
    out: U8 = np.clip(stretched, 0, 255).astype(np.uint8)
    return out


def _extent(soft: U8, bbox: tuple[int, int, int, int], rim: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of what shows (> 8) within the mask's box grown by `rim`."""
    x, y, w, h = bbox
    rows, cols = soft.shape
    top, bottom = max(0, y - rim), min(rows, y + h + rim)
    left, right = max(0, x - rim), min(cols, x + w + rim)
    ys, xs = np.nonzero(soft[top:bottom, left:right] > 8)
    if len(xs) == 0:
        return y, y + h, x, x + w
    return (
        top + int(ys.min()),
        top + int(ys.max()) + 1,
        left + int(xs.min()),
        left + int(xs.max()) + 1,
    )


def _thicken_thin_strokes(digit: U8, mask: U8) -> U8:
    """A fine pen on a big page leaves strokes far thinner than MNIST's: dilate them up to a
    minimum width relative to the digit's size (never thin a bold stroke)."""
    area = float(np.count_nonzero(mask))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    if area <= 0 or perimeter <= 0:
        return digit
    width = 2.0 * area / perimeter
    target = float(PARAMS["min_stroke_frac"]) * max(digit.shape)
    grow = round(target - width)
    if grow < 2:
        return digit
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow + 1, grow + 1))
    padded = cv2.copyMakeBorder(digit, grow, grow, grow, grow, cv2.BORDER_CONSTANT, value=0)
    return as_u8(cv2.dilate(padded, kernel))


def _deskew(digit: U8) -> tuple[U8, float]:
    """Shear upright by second-order moments, only for elongated shapes, capped at +-10 degrees."""
    m = cv2.moments(digit.astype(np.float32))
    mu02, mu20, mu11 = m["mu02"], m["mu20"], m["mu11"]
    if mu02 <= 1e-6 or mu02 < float(PARAMS["deskew_min_elongation"]) * mu20:
        return digit, 0.0
    angle = math.degrees(math.atan(mu11 / mu02))
    if abs(angle) < float(PARAMS["deskew_min_deg"]):
        return digit, 0.0
    cap = float(PARAMS["deskew_max_deg"])
    angle = max(-cap, min(cap, angle))
    skew = math.tan(math.radians(angle))
    h, w = digit.shape
    pad = math.ceil(abs(skew) * h / 2) + 1
    padded = cv2.copyMakeBorder(digit, 0, 0, pad, pad, cv2.BORDER_CONSTANT, value=0)
    cy = m["m01"] / max(m["m00"], 1e-6)
    shear = np.array([[1.0, skew, -skew * cy], [0.0, 1.0, 0.0]], dtype=np.float64)
    out = as_u8(
        cv2.warpAffine(
            padded, shear, (w + 2 * pad, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
    )
    ys, xs = np.nonzero(out > 8)
    if len(xs) == 0:
        return digit, 0.0
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], angle


def _fit_and_center(digit: U8, *, center: bool) -> U8:
    h, w = digit.shape
    scale = _BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(digit, size, interpolation=interp)
    canvas = np.zeros((_CANVAS, _CANVAS), dtype=np.uint8)
    top, left = (_CANVAS - size[1]) // 2, (_CANVAS - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = small
    if not center:
        return canvas
    m = cv2.moments(canvas.astype(np.float32))
    if m["m00"] <= 0:
        raise PreprocessingFailedError("No digit found: nothing left after scaling.")
    limit = (_CANVAS - _BOX) // 2
    dx = int(np.clip(round(_CANVAS / 2 - 0.5 - m["m10"] / m["m00"]), -limit, limit))
    dy = int(np.clip(round(_CANVAS / 2 - 0.5 - m["m01"] / m["m00"]), -limit, limit))
    shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    return as_u8(cv2.warpAffine(canvas, shift, (_CANVAS, _CANVAS), flags=cv2.INTER_NEAREST))
