"""A made-up handwriting style that the shipped models read wrong, photographed on paper.

The "boxy hand" writes a 2 as a Z with a crossbar (the shipped models read a 7) and a 6 square,
like a display digit (read as a 5). Both shapes are consistent enough for a model to learn from a
few corrections. Each stroke is a polyline in a unit box; every photo jitters each point, the
digit's place, size, width and slant, the pen's width and the ink, and puts it on paper with a
tone, a lighting gradient and grain, saved as a JPEG as a phone would: what preprocessing gets
from a real upload, not a clean 28×28 drawing.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
from attrs import frozen

from helpers import jpeg_bytes

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
Point = tuple[float, float]  # x, y in the digit's unit box, y down


@frozen
class Style:
    name: str
    label: int
    strokes: tuple[tuple[Point, ...], ...]


Z_TWO = Style(
    "2 as a crossed Z",
    2,
    (
        ((0.12, 0.08), (0.85, 0.08), (0.12, 0.92), (0.88, 0.92)),
        ((0.2, 0.5), (0.8, 0.5)),
    ),
)
SQUARE_SIX = Style(
    "6 drawn square",
    6,
    (((0.85, 0.05), (0.15, 0.05), (0.15, 0.95), (0.85, 0.95), (0.85, 0.5), (0.15, 0.5)),),
)
BOXY_HAND = (Z_TWO, SQUARE_SIX)


@frozen
class Photo:
    jpeg: bytes
    label: int
    style: str


def _paper(rng: np.random.Generator, height: int, width: int) -> F32:
    """Off-white paper lit from one side, with grain."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    slope = (cols / width - 0.5) * math.cos(angle) + (rows / height - 0.5) * math.sin(angle)
    light = rng.uniform(200, 245) + slope * rng.uniform(10, 40)
    grain = rng.normal(0, 4, (height, width)).astype(np.float32)
    return np.asarray(light + grain, dtype=np.float32)


def _ink(style: Style, rng: np.random.Generator, height: int, width: int) -> F32:
    """Pen coverage (0..1) of the digit's strokes, jittered as a hand would."""
    coverage = np.zeros((height, width), np.float32)
    side = min(height, width)
    digit_h = side * rng.uniform(0.35, 0.6)
    digit_w = digit_h * rng.uniform(0.55, 0.75)
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.12, 0.12) * height
    slant = math.radians(rng.uniform(-8, 8))
    pen_px = max(2, round(digit_h * rng.uniform(0.06, 0.11)))

    def place(point: Point) -> tuple[int, int]:
        x = (point[0] - 0.5) * digit_w + rng.normal(0, digit_h * 0.015)
        y = (point[1] - 0.5) * digit_h + rng.normal(0, digit_h * 0.015)
        return (
            round(cx + x * math.cos(slant) - y * math.sin(slant)),
            round(cy + x * math.sin(slant) + y * math.cos(slant)),
        )

    for stroke in style.strokes:
        points = np.array([place(p) for p in stroke], np.int32)
        cv2.polylines(coverage, [points], False, 1.0, pen_px, cv2.LINE_AA)
    return np.asarray(cv2.GaussianBlur(coverage, (0, 0), 0.8), dtype=np.float32)


def photo(style: Style, rng: np.random.Generator) -> U8:
    """One grayscale photo of a digit in `style`: dark ink on paper, 160-416 px wide."""
    height = int(rng.integers(160, 320))
    width = int(height * rng.uniform(0.9, 1.3))
    coverage = _ink(style, rng, height, width)
    ink_level = rng.uniform(20, 70)
    gray = _paper(rng, height, width) * (1 - coverage) + ink_level * coverage
    return np.clip(gray, 0, 255).astype(np.uint8)


def boxy_photos(count: int, seed: int) -> list[Photo]:
    """`count` photos, the styles taking turns; the same ones for the same seed."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(count):
        style = BOXY_HAND[i % len(BOXY_HAND)]
        quality = int(rng.integers(80, 96))
        jpeg = jpeg_bytes(photo(style, rng), quality=quality)
        photos.append(Photo(jpeg, style.label, style.name))
    return photos
