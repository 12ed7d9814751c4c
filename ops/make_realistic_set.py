"""Generate a deterministic realistic-upload evaluation set from MNIST test digits.

Each kind mimics something a user really uploads (phone photos of paper, chalkboards, web
canvas PNGs, sideways EXIF-tagged JPEGs, heavily compressed images), so preprocessing can be
scored per kind. Output: ``OUT/<kind>/<index>_<label>.<ext>`` plus ``OUT/labels.csv``.
The first nine kinds (`FIRST_KINDS`) are the set's first version and stay unchanged, so figures
compare across versions; five harder ones follow (issue 15): squared paper, hard shadows across
the digit, thin broken chalk, 12 MP phone photos in thin ballpoint (`phone_photo`, which tests
and benchmarks of big uploads also use; ~2 MB each, the only kind over 1000 px), and writing
styles MNIST has few of.

    python ops/make_realistic_set.py --mnist-dir /work/shared/data/mnist --out DIR \
        --per-kind 200 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)
RGB = tuple[float, float, float]
KindFn = Callable[[U8, np.random.Generator], tuple[bytes, str]]

MAX_SIDE = 1000
# MNIST rendered at this many field pixels per source pixel: fine enough that thresholding
# the smoothed field gives pen-like edges instead of the 28x28 pixel grid.
FIELD_SCALE = 6
EXIF_ORIENTATION = 0x0112
# np.rot90 quarter turns (counter-clockwise) of the stored pixels -> EXIF tag telling a
# viewer how to turn them back (6: rotate 90 CW, 3: 180, 8: rotate 90 CCW).
ORIENTATION_FOR_TURNS = {1: 6, 2: 3, 3: 8}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    kind: str
    source_index: int


@dataclass(frozen=True)
class Layout:
    height: int
    width: int
    digit_height: float
    angle: float


# --------------------------------------------------------------------------- MNIST IO


def read_idx(path: Path) -> U8:
    """Read a gzip IDX file of unsigned bytes (2051: images, 2049: labels)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None:
        raise ValueError(f"{path}: unexpected IDX magic {magic}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != math.prod(dims):
        raise ValueError(f"{path}: expected {math.prod(dims)} bytes, got {arr.size}")
    return arr.reshape(dims)


def load_mnist_test(mnist_dir: Path) -> tuple[U8, U8]:
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0]:
        raise ValueError("image and label counts differ")
    return images, labels


# --------------------------------------------------------------------------- geometry


def _f32(arr: object) -> F32:
    return np.asarray(arr, dtype=np.float32)


def _layout(
    rng: np.random.Generator,
    digit_range: tuple[float, float],
    short_range: tuple[int, int],
    frac_range: tuple[float, float],
    max_angle: float,
    square_p: float = 0.0,
) -> Layout:
    """Pick canvas size and digit height so the digit spans frac_range of the short side."""
    digit_h = rng.uniform(*digit_range)
    lo = max(short_range[0], digit_h / frac_range[1])
    hi = max(lo, min(short_range[1], digit_h / frac_range[0]))
    short = round(rng.uniform(lo, hi))
    long_side = short
    if rng.random() >= square_p:
        long_side = min(short_range[1], MAX_SIDE, round(short * rng.uniform(1.1, 1.5)))
    height, width = (long_side, short) if rng.random() < 0.6 else (short, long_side)
    return Layout(height, width, digit_h, rng.uniform(-max_angle, max_angle))


def _digit_field(digit: U8, rng: np.random.Generator) -> F32:
    """Upscale MNIST smoothly; thresholding this field later draws the stroke outline."""
    src = _f32(digit) / max(float(digit.max()), 1.0)
    src = np.pad(src, 3)
    field = _f32(
        cv2.resize(src, None, fx=FIELD_SCALE, fy=FIELD_SCALE, interpolation=cv2.INTER_CUBIC)
    )
    # Half a source pixel of blur removes the pixel staircase but keeps loops open.
    field = _f32(cv2.GaussianBlur(field, (0, 0), FIELD_SCALE * rng.uniform(0.45, 0.6)))
    return field / max(float(field.max()), 1e-6)


def _ink_points(field: F32, threshold: float) -> F32:
    ys, xs = np.nonzero(field > threshold)
    if ys.size == 0:  # blank digit: fall back to the whole field so layout still works
        h, w = field.shape
        ys, xs = np.array([0, h - 1]), np.array([0, w - 1])
    return _f32(np.stack([xs, ys], axis=1))


def _affine(
    field: F32,
    threshold: float,
    layout: Layout,
    rng: np.random.Generator,
    margin: float,
    off_centre: bool,
) -> npt.NDArray[np.float64]:
    """Affine map field -> canvas: scale to digit height, rotate, place inside the margins."""
    pts = _ink_points(field, threshold)
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    scale = layout.digit_height / float(np.ptp(pts[:, 1]) + 1)
    a = math.radians(layout.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    q = (pts - centre) @ rot.T
    extent = np.ptp(q, axis=0) + 1
    room = np.array([layout.width, layout.height]) * (1 - 2 * margin)
    # Wide digits (MNIST keeps aspect) could overflow the canvas: shrink rather than crop.
    scale = min(scale, float(np.min(room / extent)))
    q = q * scale
    m = np.array([layout.width, layout.height]) * margin
    lo = m - q.min(axis=0)
    hi = np.array([layout.width, layout.height]) - m - q.max(axis=0)
    u = rng.uniform(0.35, 0.65, size=2)
    if off_centre:
        u = rng.uniform(0.0, 1.0, size=2)
        if np.all(np.abs(u - 0.5) < 0.25):  # make at least one axis clearly off-centre
            axis = int(rng.integers(2))
            u[axis] = rng.uniform(0.0, 0.2) if rng.random() < 0.5 else rng.uniform(0.8, 1.0)
    target = lo + u * np.maximum(hi - lo, 0)
    lin = rot * scale
    return np.hstack([lin, (target - lin @ centre)[:, None]])


def _roi(field: F32, mat: npt.NDArray[np.float64], height: int, width: int) -> Box:
    h, w = field.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64)
    c = corners @ mat.T
    x0, y0 = np.floor(c.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(c.max(axis=0)).astype(int) + 2
    return max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)


def _warp(
    src: F32, mat: npt.NDArray[np.float64], box: Box, border: float, cubic: bool = True
) -> F32:
    y0, y1, x0, x1 = box
    shifted = mat.copy()
    shifted[:, 2] -= (x0, y0)
    return _f32(
        cv2.warpAffine(
            src,
            shifted,
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
    )


def _antialias(value: F32, level: F32 | float) -> F32:
    """Coverage of {value > level} with a one-pixel ramp, from a first-order distance."""
    gx = _f32(cv2.Sobel(value, cv2.CV_32F, 1, 0, ksize=3, scale=0.125))
    gy = _f32(cv2.Sobel(value, cv2.CV_32F, 0, 1, ksize=3, scale=0.125))
    grad = np.maximum(_f32(cv2.magnitude(gx, gy)), 1e-4)
    cover = value - level
    cover /= grad
    cover += 0.5
    return _f32(np.clip(cover, 0.0, 1.0, out=cover))


def _place(
    digit: U8,
    rng: np.random.Generator,
    layout: Layout,
    *,
    threshold: float,
    margin: float = 0.06,
    off_centre: bool = False,
    ragged: float = 0.0,
) -> tuple[F32, Box]:
    """Ink coverage (H, W) in [0, 1] of the digit drawn onto the canvas, and its ROI.

    `ragged` jitters the outline threshold so edges crumble (chalk on a grainy board).
    """
    field = _digit_field(digit, rng)
    mat = _affine(field, threshold, layout, rng, margin, off_centre)
    box = _roi(field, mat, layout.height, layout.width)
    value = _warp(field, mat, box, 0.0)
    level: F32 | float = threshold
    if ragged > 0:
        n = _f32(cv2.GaussianBlur(_white(rng, value.shape), (0, 0), 1.5))
        level = threshold + ragged * n / max(float(n.std()), 1e-6)
    alpha = np.zeros((layout.height, layout.width), np.float32)
    alpha[box[0] : box[1], box[2] : box[3]] = _antialias(value, level)
    return alpha, box


# --------------------------------------------------------------------------- canvas stroke


def _thin(binary: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Zhang-Suen skeleton: a web canvas stroke is a constant-width brush along a path."""
    img = np.pad(binary, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            nb = [
                img[:-2, 1:-1],
                img[:-2, 2:],
                img[1:-1, 2:],
                img[2:, 2:],
                img[2:, 1:-1],
                img[2:, :-2],
                img[1:-1, :-2],
                img[:-2, :-2],
            ]
            count = np.zeros(c.shape, np.int32)
            trans = np.zeros(c.shape, np.int32)
            for i in range(8):
                count += nb[i]
                trans += (nb[i] == 0) & (nb[(i + 1) % 8] == 1)
            p2, p4, p6, p8 = nb[0], nb[2], nb[4], nb[6]
            if step == 0:
                cond = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0)
            else:
                cond = ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
            remove = (c == 1) & (count >= 2) & (count <= 6) & (trans == 1) & cond
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _brush_stroke(
    digit: U8, rng: np.random.Generator, layout: Layout, radius_frac: float
) -> tuple[F32, Box]:
    """Constant-width round brush along the digit's skeleton, anti-aliased like a canvas."""
    field = _digit_field(digit, rng)
    mat = _affine(field, 0.4, layout, rng, 0.08, off_centre=False)
    skeleton = _thin(field > 0.4)
    inv = np.where(skeleton, 0, 255).astype(np.uint8)
    dist = _f32(cv2.distanceTransform(inv, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    box = _roi(field, mat, layout.height, layout.width)
    scale = float(np.hypot(mat[0, 0], mat[1, 0]))
    # Linear, not cubic: cubic overshoot at the far border would paint phantom lines.
    dist_canvas = _warp(dist, mat, box, 1e4, cubic=False) * scale
    # Brush width follows the MNIST 20 px box, so wide, flat digits are not drawn fatter.
    radius = max(1.2, radius_frac * 20 * FIELD_SCALE * scale)
    alpha = np.zeros((layout.height, layout.width), np.float32)
    alpha[box[0] : box[1], box[2] : box[3]] = np.clip(radius + 0.5 - dist_canvas, 0.0, 1.0)
    return alpha, box


# --------------------------------------------------------------------------- surfaces & light


def _white(rng: np.random.Generator, shape: tuple[int, ...]) -> F32:
    """Zero-mean, unit-variance uniform noise: ~3x cheaper to draw than normal noise."""
    return _f32((rng.random(shape, dtype=np.float32) - 0.5) * math.sqrt(12))


def _noise(rng: np.random.Generator, height: int, width: int, cell: int) -> F32:
    """Smooth noise with features about `cell` px across."""
    small = rng.standard_normal((height // cell + 3, width // cell + 3), dtype=np.float32)
    big = cv2.resize(small, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    return _f32(big[cell : cell + height, cell : cell + width])


def _surface(rng: np.random.Generator, height: int, width: int, base: RGB, grain: float) -> F32:
    """Paper or board as (3, H, W) planes: base colour, blotchy tone and fibre grain."""
    fine = _f32(cv2.GaussianBlur(_white(rng, (height, width)), (0, 0), 0.8))
    tone = _noise(rng, height, width, 48)
    tone *= grain * 1.2
    fine *= grain * 1.6
    tone += fine
    tint = 1 + rng.uniform(-0.3, 0.3, size=3)
    planes = np.empty((3, height, width), np.float32)
    for c in range(3):
        np.multiply(tone, float(tint[c]), out=planes[c])
        planes[c] += base[c]
    return planes


def _paper_colour(rng: np.random.Generator, white: bool = False) -> RGB:
    if white:
        v = rng.uniform(236, 250)
        return (v, v - rng.uniform(0, 3), v - rng.uniform(0, 6))
    v = rng.uniform(222, 246)
    return (v, v - rng.uniform(2, 8), v - rng.uniform(6, 20))


def _dark_ink(rng: np.random.Generator) -> RGB:
    v = rng.uniform(14, 48)
    return (v + rng.uniform(-6, 6), v + rng.uniform(-6, 6), v + rng.uniform(-4, 10))


def _paint(img: F32, alpha: F32, colour: RGB, box: Box | None = None) -> None:
    """Alpha-blend a flat colour into the (3, H, W) image in place, only inside `box`."""
    y0, y1, x0, x1 = box if box is not None else (0, img.shape[1], 0, img.shape[2])
    region = img[:, y0:y1, x0:x1]
    a = alpha[None, y0:y1, x0:x1]
    ink = np.asarray(colour, dtype=np.float32)[:, None, None]
    region += a * (ink - region)


def _pen_texture(alpha: F32, box: Box, rng: np.random.Generator, amount: float) -> F32:
    """Uneven pen pressure/ink flow along the stroke."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return alpha
    n = _f32(cv2.GaussianBlur(_white(rng, (y1 - y0, x1 - x0)), (0, 0), 3.0)) * 3.0
    out = alpha.copy()
    out[y0:y1, x0:x1] *= np.clip(1 - amount * (0.5 + 0.5 * n), 0.0, 1.0)
    return out


def _lighting(rng: np.random.Generator, height: int, width: int, strength: float) -> F32:
    """Brightness falling by `strength` across the page along a random direction."""
    phi = rng.uniform(0, 2 * math.pi)
    xs = _f32(np.linspace(-0.5, 0.5, width) * width / max(height, width))
    ys = _f32(np.linspace(-0.5, 0.5, height) * height / max(height, width))
    ramp = ys[:, None] * math.sin(phi) + xs[None, :] * math.cos(phi)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    # Falloff from a lamp is not linear; a gamma keeps some pages mostly bright.
    return _f32(1 - strength * ramp ** rng.uniform(0.7, 1.4))


def _vignette(height: int, width: int, strength: float) -> F32:
    ys = _f32(np.linspace(-1, 1, height)) ** 2
    xs = _f32(np.linspace(-1, 1, width)) ** 2
    return _f32(1 - strength * (ys[:, None] + xs[None, :]) / 2)


def _finish(img: F32, light: F32, rng: np.random.Generator, blur: tuple[float, float]) -> U8:
    """Scene lighting and white balance, camera defocus and sensor noise; (H, W, 3) bytes."""
    balance = 1 + rng.uniform(-0.03, 0.03, size=3)
    sigma = rng.uniform(*blur)
    noise = _white(rng, light.shape)
    noise *= rng.uniform(1.0, 3.0)
    noise += 0.5  # round rather than truncate when casting to bytes
    planes = []
    for c in range(3):
        lit = _f32(cv2.multiply(img[c], light, scale=float(balance[c])))
        plane = _f32(cv2.add(_f32(cv2.GaussianBlur(lit, (0, 0), sigma)), noise))
        np.clip(plane, 0, 255, out=plane)
        planes.append(plane.astype(np.uint8))
    return np.asarray(cv2.merge(planes), dtype=np.uint8)


def _jpeg(rgb: U8, quality: int, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(rgb)
    if exif is None:
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def encode_exif_rotated(rgb: U8, quarter_turns: int, quality: int) -> bytes:
    """Store `rgb` turned `quarter_turns` x 90° CCW, tagged so EXIF-aware viewers undo it."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ORIENTATION_FOR_TURNS[quarter_turns]
    stored = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
    return _jpeg(stored, quality, exif)


# --------------------------------------------------------------------------- kinds


def _photo_layout(rng: np.random.Generator, max_angle: float = 5.0) -> Layout:
    return _layout(rng, (120, 400), (300, MAX_SIDE), (0.15, 0.6), max_angle)


def _shade(rng: np.random.Generator, layout: Layout, light: float, vignette: float) -> F32:
    """Lighting gradient times vignette; both are smooth, so build at 1/8 scale."""
    h, w = layout.height // 8 + 2, layout.width // 8 + 2
    shade = _lighting(rng, h, w, light) * _vignette(h, w, vignette)
    return _f32(cv2.resize(shade, (layout.width, layout.height), interpolation=cv2.INTER_LINEAR))


def _dark_ink_photo(digit: U8, rng: np.random.Generator, layout: Layout) -> U8:
    """Kind 1's scene, shared by the EXIF and low-quality kinds."""
    alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.3, 0.5))
    alpha = _pen_texture(alpha, box, rng, 0.12) * rng.uniform(0.92, 1.0)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng), rng.uniform(2, 5))
    _paint(img, alpha, _dark_ink(rng), box)
    shade = _shade(rng, layout, rng.uniform(0.30, 0.40), rng.uniform(0.06, 0.16))
    return _finish(img, shade, rng, (0.4, 1.1))


def photo_dark_ink(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    rgb = _dark_ink_photo(digit, rng, _photo_layout(rng))
    return _jpeg(rgb, int(rng.integers(60, 96))), "jpg"


def photo_blue_ink(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _photo_layout(rng)
    if rng.random() < 0.5:
        # A real ballpoint line is far thinner than MNIST's relative stroke width.
        alpha, box = _brush_stroke(digit, rng, layout, rng.uniform(0.018, 0.035))
    else:
        alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.4, 0.55))
    # Ballpoint ink is translucent and skips a little.
    alpha = _pen_texture(alpha, box, rng, 0.25) * rng.uniform(0.82, 0.95)
    ink = (rng.uniform(18, 45), rng.uniform(40, 80), rng.uniform(135, 185))
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng, white=True), 2.5)
    _paint(img, alpha, ink, box)
    shade = _shade(rng, layout, rng.uniform(0.15, 0.35), rng.uniform(0.04, 0.12))
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 96))), "jpg"


def _signed_plane(rng: np.random.Generator, xs: F32, ys: F32) -> F32:
    phi = rng.uniform(0, 2 * math.pi)
    d = ys[:, None] * math.sin(phi) + xs[None, :] * math.cos(phi)
    # Shadows of hands and phones are not straight.
    bend = rng.uniform(-0.3, 0.3) / max(float(xs[-1]), float(ys[-1]), 1.0)
    along = ys[:, None] * math.cos(phi) - xs[None, :] * math.sin(phi)
    return _f32(d + bend * (along - float(along.mean())) ** 2)


def _shadow(rng: np.random.Generator, height: int, width: int) -> F32:
    """Multiplicative cast shadow over 20-50% of the frame with a blurred edge.

    Built at half resolution: even the hardest edge ramp spans several pixels there.
    """
    xs = _f32(np.arange((width + 1) // 2) * 2)
    ys = _f32(np.arange((height + 1) // 2) * 2)
    d = _signed_plane(rng, xs, ys)
    if rng.random() < 0.5:  # an object corner (wedge) rather than a straight-ish edge
        d = np.minimum(d - float(np.median(d)), _signed_plane(rng, xs, ys))
    coverage = rng.uniform(0.2, 0.5)
    level = float(np.quantile(d[::2, ::2], 1 - coverage))
    soft = rng.uniform(3, 18)
    t = np.clip((d - level) / (2 * soft) + 0.5, 0, 1)
    shadow = 1 - rng.uniform(0.35, 0.6) * (t * t * (3 - 2 * t))
    return _f32(cv2.resize(_f32(shadow), (width, height), interpolation=cv2.INTER_LINEAR))


def photo_shadow(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _photo_layout(rng)
    alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.3, 0.5))
    alpha = _pen_texture(alpha, box, rng, 0.12)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng), rng.uniform(2, 4))
    _paint(img, alpha, _dark_ink(rng), box)
    # Only a mild overall gradient, so gradient x shadow never drops paper close to ink.
    shade = _shade(rng, layout, rng.uniform(0.05, 0.15), rng.uniform(0.03, 0.1))
    shade *= _shadow(rng, layout.height, layout.width)
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 96))), "jpg"


def _project(profile: Callable[[F32], F32], layout: Layout, cos_x: float, cos_y: float) -> F32:
    """Spread a 1-D profile over the canvas: pixel (x, y) gets profile(x*cos_x + y*cos_y).

    One inverse-mapped warp from a 1-px-wide source is far cheaper than per-pixel maths.
    """
    corners = [x * cos_x + y * cos_y for x in (0, layout.width) for y in (0, layout.height)]
    origin = min(corners) - 2
    t = _f32(np.arange(math.ceil(max(corners) - origin) + 3) + origin)
    mat = np.array([[0.0, 0.0, 0.0], [cos_x, cos_y, -origin]])
    return _f32(
        cv2.warpAffine(
            profile(t).reshape(-1, 1),
            mat,
            (layout.width, layout.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    )


def _line_cover(t: F32, phase: float, spacing: float, half_thick: float) -> F32:
    """Coverage of evenly spaced lines across the 1-D position `t`, anti-aliased over a pixel."""
    to_line = np.abs(np.mod(t - phase + spacing / 2, spacing) - spacing / 2)
    return _f32(np.clip(half_thick + 0.5 - to_line, 0, 1))


def _pen_on_paper(
    img: F32, alpha: F32, box: Box, layout: Layout, rng: np.random.Generator, dark_p: float
) -> tuple[bytes, str]:
    """Dark (share `dark_p`) or blue ink onto the prepared paper, lit and photographed."""
    ink = _dark_ink(rng) if rng.random() < dark_p else (25.0, 45.0, 140.0)
    _paint(img, alpha, ink, box)
    shade = _shade(rng, layout, rng.uniform(0.1, 0.3), rng.uniform(0.04, 0.12))
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 96))), "jpg"


def _rule_lines(rng: np.random.Generator, layout: Layout, paper: F32) -> None:
    """Horizontal ruling tilted with the page, sometimes a red margin; paints in place."""
    a = math.radians(layout.angle + rng.uniform(-1, 1))
    spacing = rng.uniform(25, 45)
    half_thick = rng.uniform(1, 3) / 2
    phase = rng.uniform(0, spacing)
    header = rng.uniform(0, 0.12) * layout.height  # ruled pads leave a blank header
    strength = rng.uniform(0.55, 0.9)

    def ruling(t: F32) -> F32:
        cover = _line_cover(t, phase, spacing, half_thick) * strength
        return _f32(np.where(t < header, 0, cover))

    colour = (150.0, 190.0, 230.0) if rng.random() < 0.7 else (172.0, 176.0, 184.0)
    _paint(paper, _project(ruling, layout, -math.sin(a), math.cos(a)), colour)
    if rng.random() < 0.5:
        margin_x = rng.uniform(0.06, 0.2) * layout.width
        red_half = rng.uniform(1, 2.5) / 2
        red_strength = rng.uniform(0.6, 0.9)

        def margin(t: F32) -> F32:
            return _f32(np.clip(red_half + 0.5 - np.abs(t - margin_x), 0, 1) * red_strength)

        _paint(paper, _project(margin, layout, math.cos(a), math.sin(a)), (225.0, 105.0, 115.0))


def ruled_paper(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _photo_layout(rng)
    alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.3, 0.5))
    alpha = _pen_texture(alpha, box, rng, 0.15)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng, white=True), 3.0)
    _rule_lines(rng, layout, img)
    return _pen_on_paper(img, alpha, box, layout, rng, dark_p=0.6)


def _smudges(rng: np.random.Generator, height: int, width: int) -> F32:
    """Faint chalk dust clouds and eraser swipes, built at 1/8 scale (they are blurry)."""
    sh, sw = height // 8 + 1, width // 8 + 1
    layer = np.zeros((sh, sw), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        centre = (int(rng.integers(sw)), int(rng.integers(sh)))
        axes = (int(rng.integers(6, max(7, sw // 2))), int(rng.integers(2, max(3, sh // 6))))
        ang = rng.uniform(-20, 20)
        cv2.ellipse(layer, centre, axes, ang, 0, 360, float(rng.uniform(0.03, 0.12)), -1)
    streaks = _f32(cv2.GaussianBlur(_white(rng, (sh, sw)), (0, 0), sigmaX=3.0, sigmaY=1.0))
    layer = _f32(cv2.GaussianBlur(layer, (0, 0), 2.5)) * np.clip(1 + 1.5 * streaks, 0.3, 1.8)
    return _f32(cv2.resize(layer, (width, height), interpolation=cv2.INTER_CUBIC))


def _chalk(alpha: F32, box: Box, rng: np.random.Generator) -> F32:
    """Patchy chalk: board grain leaves gaps inside the stroke, dust halos the edge."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return alpha
    roi = alpha[y0:y1, x0:x1]
    n = _f32(cv2.GaussianBlur(_white(rng, roi.shape), (0, 0), rng.uniform(0.7, 1.3)))
    n /= max(float(n.std()), 1e-6)
    patch = np.clip(rng.uniform(0.72, 0.85) + 0.35 * n, 0.05, 1.0)
    halo = _f32(cv2.GaussianBlur(roi, (0, 0), 4.0)) * rng.uniform(0.08, 0.18)
    out = alpha.copy()
    out[y0:y1, x0:x1] = np.maximum(roi * patch, halo) * rng.uniform(0.85, 0.95)
    return out


def chalkboard(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _photo_layout(rng)
    # Chalk is fatter than pen ink, but a lower threshold would close small loops.
    alpha, box = _place(
        digit, rng, layout, threshold=rng.uniform(0.28, 0.42), ragged=rng.uniform(0.04, 0.08)
    )
    return _on_board(_chalk(alpha, box, rng), box, layout, rng, chalk_low=212)


def _on_board(
    alpha: F32, box: Box, layout: Layout, rng: np.random.Generator, chalk_low: float
) -> tuple[bytes, str]:
    """Chalk `alpha` on a green or grey board with dust smudges, photographed."""
    if rng.random() < 0.6:
        board = (rng.uniform(30, 50), rng.uniform(58, 82), rng.uniform(45, 62))
    else:
        g = rng.uniform(38, 58)
        board = (g, g + rng.uniform(0, 4), g + rng.uniform(0, 6))
    img = _surface(rng, layout.height, layout.width, board, rng.uniform(2, 4))
    chalk = rng.uniform(chalk_low, 240)
    chalk_rgb = (chalk, chalk - rng.uniform(0, 5), chalk - rng.uniform(0, 10))
    _paint(img, _smudges(rng, layout.height, layout.width), chalk_rgb)
    _paint(img, alpha, chalk_rgb, box)
    shade = _shade(rng, layout, rng.uniform(0.1, 0.25), rng.uniform(0.05, 0.15))
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 93))), "jpg"


def _dust(rng: np.random.Generator, layout: Layout, box: Box) -> F32:
    """A few isolated 1-4 px specks well away from the digit (a cropper must ignore them)."""
    h, w = layout.height, layout.width
    layer = np.zeros((h, w), np.float32)
    gap = 0.08 * min(h, w)
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[-3:4, -3:4].astype(np.float32)
    for _ in range(int(rng.integers(3, 13))):
        size = rng.uniform(1, 4)
        for _try in range(40):
            cx, cy = rng.uniform(4, w - 5), rng.uniform(4, h - 5)
            if math.hypot(max(x0 - cx, 0.0, cx - x1), max(y0 - cy, 0.0, cy - y1)) > gap:
                break
        else:
            continue
        iy, ix = int(cy), int(cx)
        r = np.hypot(yy - (cy - iy), xx - (cx - ix))
        spot = np.clip(size / 2 + 0.5 - r, 0, 1) * rng.uniform(0.5, 0.9)
        win = layer[iy - 3 : iy + 4, ix - 3 : ix + 4]
        np.maximum(win, spot, out=win)
    return layer


def off_centre_rotated(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _layout(rng, (120, 300), (300, MAX_SIDE), (0.15, 0.45), 15.0)
    alpha, box = _place(
        digit, rng, layout, threshold=rng.uniform(0.3, 0.5), margin=0.05, off_centre=True
    )
    alpha = _pen_texture(alpha, box, rng, 0.12)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng), rng.uniform(2, 4))
    _paint(img, alpha, _dark_ink(rng), box)
    grey = rng.uniform(50, 100)
    _paint(img, _dust(rng, layout, box), (grey, grey * 0.95, grey * 0.9))
    shade = _shade(rng, layout, rng.uniform(0.1, 0.3), rng.uniform(0.04, 0.12))
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 96))), "jpg"


def exif_rotated_jpeg(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    rgb = _dark_ink_photo(digit, rng, _photo_layout(rng))
    turns = int(rng.integers(1, 4))
    return encode_exif_rotated(rgb, turns, int(rng.integers(60, 96))), "jpg"


def canvas_png(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _layout(rng, (100, 360), (280, 600), (0.3, 0.65), 5.0, square_p=0.5)
    thin = rng.random() < 0.4
    radius_frac = rng.uniform(0.022, 0.04) if thin else rng.uniform(0.05, 0.075)
    alpha, _ = _brush_stroke(digit, rng, layout, radius_frac)
    colours = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (24, 24, 24), (20, 30, 90), (70, 15, 20)]
    colour = np.asarray(colours[int(rng.integers(len(colours)))], dtype=np.uint8)
    a8 = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
    rgba = np.zeros((layout.height, layout.width, 4), np.uint8)
    # Browsers export fully transparent pixels as (0, 0, 0, 0): a reader that drops alpha
    # sees black on black, which is exactly the trap this kind tests.
    rgba[a8 > 0, :3] = colour
    rgba[..., 3] = a8
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue(), "png"


def low_quality_jpeg(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _layout(rng, (70, 200), (200, 350), (0.3, 0.6), 5.0)
    rgb = _dark_ink_photo(digit, rng, layout)
    return _jpeg(rgb, int(rng.integers(15, 36))), "jpg"


# --------------------------------------------------------------------------- phone photos

# A phone photo's scene is drawn at 1/PHONE_SCENE_SCALE of its size and enlarged: lens blur,
# demosaicing and noise reduction leave edges a few pixels soft at 12 MP anyway, and drawing
# 12 MP with the helpers above would take seconds.
PHONE_SCENE_SCALE = 2


def _sensor_grain(rgb: U8, rng: np.random.Generator, sigma: float) -> U8:
    """Full-resolution luma grain: the pixel-level noise a phone leaves after its denoiser."""
    noise = _white(rng, rgb.shape[:2])
    noise *= sigma
    planes = [_u8(cv2.add(plane, noise, dtype=cv2.CV_8U)) for plane in cv2.split(rgb)]
    return _u8(cv2.merge(planes))


def _u8(arr: object) -> U8:
    return np.asarray(arr, dtype=np.uint8)


def phone_photo(
    digit: U8,
    rng: np.random.Generator,
    *,
    width: int = 4032,
    height: int = 3024,
    quarter_turns: int = 0,
    quality: int = 90,
    ballpoint: bool = False,
) -> bytes:
    """A full-size phone photo (12 MP JPEG by default) of `digit` in pen on a sheet of paper.

    Paper grain and blotchy tone, light falling off across the page and into the corners, a
    digit 25-45% of the short side tall, a little defocus and sensor noise. With `quarter_turns`
    (1-3) the pixels are stored turned 90 degrees counter-clockwise that many times and tagged
    with the EXIF orientation that turns them back, as a phone held sideways writes them: an
    EXIF-aware viewer shows `width` x `height`, upright. With `ballpoint` the digit is a thin
    constant-width line along its skeleton (a ballpoint's, ~1-2% of the digit's height), as the
    `phone_ballpoint` kind draws it; else MNIST's own, relatively fat, stroke.
    """
    if quarter_turns not in (0, 1, 2, 3):
        raise ValueError(f"quarter_turns must be 0-3, got {quarter_turns}")
    scene_h = max(8, round(height / PHONE_SCENE_SCALE))
    scene_w = max(8, round(width / PHONE_SCENE_SCALE))
    layout = Layout(
        scene_h,
        scene_w,
        rng.uniform(0.25, 0.45) * min(scene_h, scene_w),
        rng.uniform(-6.0, 6.0),
    )
    if ballpoint:
        alpha, box = _brush_stroke(digit, rng, layout, rng.uniform(0.012, 0.025))
        alpha = _pen_texture(alpha, box, rng, 0.25) * rng.uniform(0.8, 0.95)
    else:
        alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.3, 0.5), margin=0.08)
        alpha = _pen_texture(alpha, box, rng, 0.12) * rng.uniform(0.9, 1.0)
    blue = (rng.uniform(18, 45), rng.uniform(40, 80), rng.uniform(135, 185))
    ink = _dark_ink(rng) if rng.random() < 0.7 else blue
    paper = _surface(rng, scene_h, scene_w, _paper_colour(rng), rng.uniform(2, 4))
    _paint(paper, alpha, ink, box)
    shade = _shade(rng, layout, rng.uniform(0.1, 0.3), rng.uniform(0.08, 0.2))
    scene = _finish(paper, shade, rng, (0.5, 1.0))
    rgb = _u8(cv2.resize(scene, (width, height), interpolation=cv2.INTER_LINEAR))
    rgb = _sensor_grain(rgb, rng, rng.uniform(3.0, 5.0))
    if quarter_turns:
        return encode_exif_rotated(rgb, quarter_turns, quality)
    return _jpeg(rgb, quality)


# --------------------------------------------------------------------------- harder kinds
# Added for issue 15, where private real uploads read worst: lines crossing the strokes, hard
# shadows across the digit, thin broken chalk, thin ballpoint in full-size phone photos, and
# writing styles MNIST has few of. The kinds above are unchanged, so old figures still compare.


def squared_paper(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    """Squared (or densely ruled) paper: blue, grey or faint lines every 12-28 px, so several
    cross every stroke; the pen is sometimes a thin ballpoint line."""
    layout = _photo_layout(rng)
    if rng.random() < 0.4:
        alpha, box = _brush_stroke(digit, rng, layout, rng.uniform(0.02, 0.035))
    else:
        alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.35, 0.5))
    alpha = _pen_texture(alpha, box, rng, 0.2)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng, white=True), 3.0)
    a = math.radians(layout.angle + rng.uniform(-1, 1))
    spacing = rng.uniform(12, 28)
    half_thick = rng.uniform(0.6, 2.0) / 2
    style = int(rng.integers(3))  # blue, grey, faint
    strength = rng.uniform(*((0.5, 0.85), (0.5, 0.85), (0.2, 0.4))[style])
    colour = ((140.0, 180.0, 225.0), (150.0, 154.0, 162.0), (170.0, 200.0, 230.0))[style]

    def lines(cos_x: float, cos_y: float) -> F32:
        phase = rng.uniform(0, spacing)
        return _project(
            lambda t: _line_cover(t, phase, spacing, half_thick) * strength, layout, cos_x, cos_y
        )

    _paint(img, lines(-math.sin(a), math.cos(a)), colour)
    if rng.random() < 0.75:  # squared; else densely ruled
        _paint(img, lines(math.cos(a), math.sin(a)), colour)
    return _pen_on_paper(img, alpha, box, layout, rng, dark_p=0.5)


def _hard_shadow(rng: np.random.Generator, layout: Layout, box: Box) -> F32:
    """A sharp-edged cast shadow (a phone or hand under a lamp) whose edge crosses the digit."""
    y0, y1, x0, x1 = box
    phi = rng.uniform(0, 2 * math.pi)
    cx = (x0 + x1) / 2 + rng.uniform(-0.25, 0.25) * (x1 - x0)
    cy = (y0 + y1) / 2 + rng.uniform(-0.25, 0.25) * (y1 - y0)
    xs = _f32(np.arange(layout.width) - cx)
    ys = _f32(np.arange(layout.height) - cy)
    d = ys[:, None] * math.sin(phi) + xs[None, :] * math.cos(phi)
    if rng.random() < 0.4:  # a corner of the object rather than a straight edge
        phi2 = phi + rng.uniform(0.6, 1.6) * (1 if rng.random() < 0.5 else -1)
        d = np.minimum(d, ys[:, None] * math.sin(phi2) + xs[None, :] * math.cos(phi2))
    soft = rng.uniform(0.5, 3.0)
    t = np.clip(d / (2 * soft) + 0.5, 0, 1)
    return _f32(1 - rng.uniform(0.45, 0.7) * (t * t * (3 - 2 * t)))


def hard_shadow(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    layout = _photo_layout(rng)
    alpha, box = _place(digit, rng, layout, threshold=rng.uniform(0.3, 0.5))
    alpha = _pen_texture(alpha, box, rng, 0.15)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng), rng.uniform(2, 4))
    ink = _dark_ink(rng) if rng.random() < 0.7 else (25.0, 45.0, 140.0)
    _paint(img, alpha, ink, box)
    shade = _shade(rng, layout, rng.uniform(0.05, 0.15), rng.uniform(0.03, 0.1))
    shade *= _hard_shadow(rng, layout, box)
    return _jpeg(_finish(img, shade, rng, (0.3, 0.8)), int(rng.integers(60, 96))), "jpg"


def _breaks(alpha: F32, box: Box, rng: np.random.Generator, share: float) -> F32:
    """Gaps along the stroke where the chalk skipped: blobs of a smooth field cut it."""
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        return alpha
    roi = alpha[y0:y1, x0:x1]
    n = _f32(cv2.GaussianBlur(_white(rng, roi.shape), (0, 0), rng.uniform(3.0, 6.0)))
    cut = float(np.quantile(n, share))
    keep = np.clip((n - cut) / max(float(n.std()) * 0.2, 1e-6) + 0.5, 0, 1)
    out = alpha.copy()
    out[y0:y1, x0:x1] = roi * keep
    return out


def chalk_thin(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    """Chalk held on its point: a thin line, patchy, broken in places."""
    layout = _photo_layout(rng)
    alpha, box = _brush_stroke(digit, rng, layout, rng.uniform(0.025, 0.045))
    alpha = _chalk(_breaks(alpha, box, rng, rng.uniform(0.05, 0.15)), box, rng)
    return _on_board(alpha, box, layout, rng, chalk_low=205)


def phone_ballpoint(digit: U8, rng: np.random.Generator) -> tuple[bytes, str]:
    """The reads issue's 12 MP phone photo, written with a thin ballpoint."""
    return phone_photo(digit, rng, quality=int(rng.integers(80, 95)), ballpoint=True), "jpg"


# Writing styles MNIST has few of, as pen strokes in a (0..0.7) x (0..1) box, y down.
Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    steps = max(4, int(abs(end - start) / 10))
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(start, end, steps)
    ]


STYLE_GLYPHS: dict[int, list[Stroke]] = {
    # 1 with a flag and a foot
    1: [[(0.14, 0.26), (0.4, 0.0), (0.4, 1.0)], [(0.14, 1.0), (0.66, 1.0)]],
    # 2 with a loop where the diagonal meets the base
    2: [
        [
            *_arc(0.35, 0.27, 0.28, 0.25, 200, 370),
            (0.6, 0.36),
            (0.16, 0.86),
            *_arc(0.24, 0.84, 0.17, 0.14, 290, -40),
            (0.7, 0.94),
        ]
    ],
    # open 4: the two strokes never meet at the top
    4: [[(0.2, 0.0), (0.08, 0.62), (0.7, 0.62)], [(0.55, 0.08), (0.55, 1.0)]],
    # 7 with a crossbar
    7: [[(0.04, 0.04), (0.68, 0.04), (0.26, 1.0)], [(0.22, 0.52), (0.64, 0.52)]],
    # 9 with a straight stem
    9: [_arc(0.34, 0.27, 0.29, 0.26, 0, 360), [(0.63, 0.27), (0.63, 1.0)]],
}
STYLED_LABELS = tuple(sorted(STYLE_GLYPHS))


def _style_digit(label: int, rng: np.random.Generator) -> U8:
    """The label's style as a 28x28 white-on-black glyph like MNIST's: jittered, slanted,
    drawn with a round pen, so the photo pipeline above can place it like any digit."""
    size = 112
    img = np.zeros((size, size), np.uint8)
    slant = rng.uniform(-0.25, 0.12)
    width = rng.uniform(0.8, 1.15)
    height_px = size * 0.72
    for stroke in STYLE_GLYPHS[label]:
        pts = []
        for x, y in stroke:
            jx, jy = rng.normal(0, 0.018, size=2)
            x, y = (x + jx) * width, y + jy
            pts.append(((x + slant * (1 - y)) * height_px, y * height_px))
        arr = np.asarray(pts, dtype=np.float64)
        poly = np.round(arr * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [poly], False, 255, int(rng.integers(10, 15)), cv2.LINE_AA, shift=4)
    ys, xs = np.nonzero(img)
    crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    # MNIST: the glyph fits a 20x20 box (aspect kept), centred in 28x28.
    h, w = crop.shape
    k = 20 / max(h, w)
    small = cv2.resize(
        crop, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA
    )
    out = np.zeros((28, 28), np.uint8)
    oy, ox = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    return out


def writing_styles(label: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """A 1, 2, 4, 7 or 9 in a style MNIST has few of, photographed in pen on paper."""
    glyph = _style_digit(label, rng)
    layout = _photo_layout(rng)
    if rng.random() < 0.5:
        return _jpeg(_dark_ink_photo(glyph, rng, layout), int(rng.integers(60, 96))), "jpg"
    alpha, box = _brush_stroke(glyph, rng, layout, rng.uniform(0.025, 0.05))
    alpha = _pen_texture(alpha, box, rng, 0.2) * rng.uniform(0.85, 0.97)
    img = _surface(rng, layout.height, layout.width, _paper_colour(rng, white=True), 2.5)
    _paint(img, alpha, (rng.uniform(18, 45), rng.uniform(40, 80), rng.uniform(135, 185)), box)
    shade = _shade(rng, layout, rng.uniform(0.15, 0.35), rng.uniform(0.04, 0.12))
    return _jpeg(_finish(img, shade, rng, (0.4, 1.0)), int(rng.integers(60, 96))), "jpg"


KIND_FUNCS: dict[str, KindFn] = {
    "photo_dark_ink": photo_dark_ink,
    "photo_blue_ink": photo_blue_ink,
    "photo_shadow": photo_shadow,
    "ruled_paper": ruled_paper,
    "chalkboard": chalkboard,
    "off_centre_rotated": off_centre_rotated,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "canvas_png": canvas_png,
    "low_quality_jpeg": low_quality_jpeg,
    "squared_paper": squared_paper,
    "hard_shadow": hard_shadow,
    "chalk_thin": chalk_thin,
    "phone_ballpoint": phone_ballpoint,
}
# Kinds drawn from the label alone (the MNIST digit only picks which label).
LABEL_KIND_FUNCS: dict[str, Callable[[int, np.random.Generator], tuple[bytes, str]]] = {
    "writing_styles": writing_styles,
}
# The nine kinds of the first set (before issue 15), for figures that compare across versions.
FIRST_KINDS: tuple[str, ...] = (
    "photo_dark_ink",
    "photo_blue_ink",
    "photo_shadow",
    "ruled_paper",
    "chalkboard",
    "off_centre_rotated",
    "exif_rotated_jpeg",
    "canvas_png",
    "low_quality_jpeg",
)
KINDS: tuple[str, ...] = (*KIND_FUNCS, *LABEL_KIND_FUNCS)


# --------------------------------------------------------------------------- driver


def _kind_key(kind: str) -> int:
    # crc32, not hash(): str hashes are salted per process and would break determinism.
    return zlib.crc32(kind.encode())


def source_indices(labels: U8, kind: str, per_kind: int, seed: int) -> npt.NDArray[np.int64]:
    perm = np.random.default_rng([seed, _kind_key(kind), 0]).permutation(len(labels))
    if kind in LABEL_KIND_FUNCS:  # only digits whose label has a style
        perm = perm[np.isin(labels[perm], STYLED_LABELS)]
    return perm[np.arange(per_kind) % len(perm)].astype(np.int64)


def generate(mnist_dir: Path, out: Path, per_kind: int, seed: int) -> list[Sample]:
    images, labels = load_mnist_test(mnist_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for kind in KINDS:
        started = time.perf_counter()
        kind_dir = out / kind
        kind_dir.mkdir(exist_ok=True)
        total_bytes = 0
        for i, src in enumerate(source_indices(labels, kind, per_kind, seed)):
            rng = np.random.default_rng([seed, _kind_key(kind), 1, i])
            label = int(labels[src])
            if kind in LABEL_KIND_FUNCS:
                data, ext = LABEL_KIND_FUNCS[kind](label, rng)
            else:
                data, ext = KIND_FUNCS[kind](images[src], rng)
            rel = f"{kind}/{i:04d}_{label}.{ext}"
            (out / rel).write_bytes(data)
            total_bytes += len(data)
            samples.append(Sample(rel, label, kind, int(src)))
        took = time.perf_counter() - started
        print(
            f"{kind:<20} {per_kind:5d} images  {took:6.1f}s  "
            f"{total_bytes / max(per_kind, 1) / 1024:6.1f} KiB/image"
        )
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "kind", "source_index"])
        for s in samples:
            writer.writerow([s.path, s.label, s.kind, s.source_index])
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mnist-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-kind", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_kind < 1:
        parser.error("--per-kind must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")  # numpy SeedSequence rejects negative entropy
    generate(args.mnist_dir, args.out, args.per_kind, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
