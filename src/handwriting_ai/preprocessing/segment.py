"""Which foreground pixels are the digit: ruled lines out, stroke fragments grouped, specks dropped.

Photos break strokes into pieces and add specks, shadows and ruled lines, so the largest connected
component alone is not the digit. We seed a group with the heaviest central component and grow it
with nearby pieces; small pieces must nearly touch, larger ones may sit a little further away.
"""

from __future__ import annotations

import cv2
import numpy as np
from attrs import frozen

from handwriting_ai.preprocessing.arrays import U8, as_u8

_LINE_MIN_LENGTH_FRAC = 0.45
_LINE_MAX_THICKNESS_FRAC = 1 / 48
_SPECK_AREA_FRAC = 0.02
_NEAR_GAP_FRAC = 0.08
_FAR_GAP_FRAC = 0.3
_SMALL_PIECE_FRAC = 0.05
_BORDER_PENALTY = 0.2


@frozen
class Grouping:
    mask: U8
    bbox: tuple[int, int, int, int]  # x, y, w, h
    kept: int
    dropped: int


def remove_ruled_lines(mask: U8) -> tuple[U8, int]:
    """Erase long thin horizontal/vertical runs (ruled paper, margins), then re-join cut strokes."""
    h, w = mask.shape
    thick_max = max(2, round(min(h, w) * _LINE_MAX_THICKNESS_FRAC))
    lines = np.zeros_like(mask)
    found = 0
    set_pixels = mask > 0
    for length, horizontal in (
        (max(8, int(w * _LINE_MIN_LENGTH_FRAC)), True),
        (max(8, int(h * _LINE_MIN_LENGTH_FRAC)), False),
    ):
        # The opening keeps nothing unless some row (column) holds a run of set pixels at least
        # min(length - anchor, anchor + 1) long: erosion counts pixels past the image's edge as
        # set, so a run touching the edge needs only that much. Fewer set pixels in every row
        # than that: no run, nothing to open (most digits; the same result, ~0.1 ms sooner).
        anchor = length // 2
        longest = int(set_pixels.sum(axis=1 if horizontal else 0).max())
        if longest < min(length - anchor, anchor + 1):
            continue
        shape = (length, 1) if horizontal else (1, length)
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, shape)
        # An opening is this erosion dilated (as `morphologyEx` does it): when the erosion is
        # empty, so is the opening, and the dilation is skipped.
        eroded = cv2.erode(mask, kernel)
        if not cv2.countNonZero(eroded):  # the usual case: no line at all, nothing to label
            continue
        runs = cv2.dilate(eroded, kernel)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
        for i in range(1, n):
            thickness = stats[i, cv2.CC_STAT_HEIGHT] if horizontal else stats[i, cv2.CC_STAT_WIDTH]
            if thickness <= thick_max:
                lines[labels == i] = 255
                found += 1
    if not found:
        return mask, 0
    cleaned = cv2.bitwise_and(mask, cv2.bitwise_not(lines))
    bridge = cv2.getStructuringElement(cv2.MORPH_RECT, (3, thick_max + 3))
    rejoined = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, bridge)
    # Closing may only restore pixels where a line was erased, never grow the strokes elsewhere.
    restored = cv2.bitwise_and(rejoined, lines)
    return as_u8(cv2.bitwise_or(cleaned, restored)), found


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    dx = max(0, max(ax, bx) - min(ax + aw, bx + bw))
    dy = max(0, max(ay, by) - min(ay + ah, by + bh))
    return max(dx, dy)


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def group_digit_components(mask: U8, ink: U8) -> Grouping | None:
    h, w = mask.shape
    join = max(3, (min(h, w) // 64) | 1)
    # Label on a slightly dilated mask so chalk and broken pen strokes count as one piece.
    joined = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (join, join)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if n <= 1:
        return None
    if n == 2:
        # One piece (most drawings and scans): it is the seed and the whole group. The general
        # path below gives the same answer, with its weighing and growing done for nothing.
        if float(ink[mask > 0].sum()) <= 0:
            return None
        group_mask = as_u8(cv2.bitwise_and(joined, mask))  # joined covers mask: == mask
        x0, y0, bw, bh = cv2.boundingRect(group_mask)
        return Grouping(
            mask=group_mask, bbox=(int(x0), int(y0), int(bw), int(bh)), kept=1, dropped=0
        )
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    mass = np.bincount(labels.ravel(), weights=np.where(mask > 0, ink, 0).ravel(), minlength=n)[1:]
    boxes = [tuple(int(v) for v in stats[i, :4]) for i in range(1, n)]
    centre = np.array([w / 2, h / 2])
    diag = float(np.hypot(w, h))
    centrality = np.array(
        [
            1.0
            - 0.5 * float(np.hypot(b[0] + b[2] / 2 - centre[0], b[1] + b[3] / 2 - centre[1])) / diag
            for b in boxes
        ]
    )
    # Shadow edges and page borders enter from outside the frame; digits rarely touch the edge.
    touches = np.array(
        [b[0] == 0 or b[1] == 0 or b[0] + b[2] >= w or b[1] + b[3] >= h for b in boxes]
    )
    seed = int(np.argmax(mass * centrality * np.where(touches, _BORDER_PENALTY, 1.0)))
    if mass[seed] <= 0:
        return None
    chosen = {seed}
    box: tuple[int, int, int, int] = (
        boxes[seed][0],
        boxes[seed][1],
        boxes[seed][2],
        boxes[seed][3],
    )
    group_area = areas[seed]
    changed = True
    while changed:
        changed = False
        size = max(box[2], box[3])
        for i in range(len(boxes)):
            if i in chosen or touches[i] or areas[i] < _SPECK_AREA_FRAC * group_area * 0.25:
                continue
            b = boxes[i]
            small = areas[i] < _SMALL_PIECE_FRAC * group_area
            limit = (_NEAR_GAP_FRAC if small else _FAR_GAP_FRAC) * size
            if _gap(box, (b[0], b[1], b[2], b[3])) <= limit:
                chosen.add(i)
                box = _union(box, (b[0], b[1], b[2], b[3]))
                group_area += areas[i]
                changed = True
    chosen_label = np.zeros(n, dtype=np.uint8)  # a lookup table: label -> 255 if chosen
    chosen_label[[i + 1 for i in chosen]] = 255
    group_mask = as_u8(cv2.bitwise_and(chosen_label[labels], mask))
    if not cv2.countNonZero(group_mask):
        return None
    x0, y0, bw, bh = cv2.boundingRect(group_mask)
    bbox = (int(x0), int(y0), int(bw), int(bh))
    return Grouping(mask=group_mask, bbox=bbox, kept=len(chosen), dropped=len(boxes) - len(chosen))
