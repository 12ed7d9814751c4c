"""One read, start to finish, run inside the bounded executor: bytes in, a `Reading` out."""

from __future__ import annotations

import base64
import io
import time

import torch
from attrs import frozen
from PIL import Image

from handwriting_ai.inference.engine import Ensemble
from handwriting_ai.inference.tta import TtaProfile
from handwriting_ai.preprocessing import (
    ImageLimits,
    PreprocessOptions,
    decode_image,
    preprocess_gray,
)
from handwriting_ai.preprocessing.pipeline import Preprocessed


@frozen
class Reading:
    digit: int
    confidence: float
    probs: list[float]
    model_id: str
    uncertain: bool
    visual_png_b64: str | None
    preprocessed: Preprocessed
    compute_ms: float
    # Where compute_ms went (the metrics' per-stage histograms): bytes to pixels, pixels to the
    # 28x28 input, the ensemble's forward passes.
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    forward_ms: float = 0.0


def read_digit(
    data: bytes,
    *,
    content_type: str | None,
    ensemble: Ensemble,
    limits: ImageLimits,
    options: PreprocessOptions,
    tta_profile: TtaProfile,
    uncertain_threshold: float,
    visualize: bool,
    visualize_max_bytes: int = 16 * 1024,
) -> Reading:
    started = time.perf_counter()
    gray = decode_image(data, limits, content_type)
    decoded = time.perf_counter()
    pre = preprocess_gray(gray, options)
    preprocessed = time.perf_counter()
    x = torch.from_numpy(pre.tensor).reshape(1, 1, 28, 28)
    probs = ensemble.predict(x, tta_profile)
    forwarded = time.perf_counter()
    as_list = probs.tolist()  # one conversion: iterating a tensor makes a tensor per value
    values = [round(p, 6) for p in as_list]
    digit = as_list.index(max(as_list))  # the first maximum, as torch.argmax
    confidence = values[digit]
    return Reading(
        digit=digit,
        confidence=confidence,
        probs=values,
        model_id=ensemble.model_id,
        uncertain=confidence < uncertain_threshold,
        visual_png_b64=_png_b64(pre, visualize_max_bytes) if visualize else None,
        preprocessed=pre,
        compute_ms=round((time.perf_counter() - started) * 1000, 2),
        decode_ms=(decoded - started) * 1000,
        preprocess_ms=(preprocessed - decoded) * 1000,
        forward_ms=(forwarded - preprocessed) * 1000,
    )


def _png_b64(pre: Preprocessed, max_bytes: int) -> str | None:
    """The 28x28 input as a base64 PNG, left out when the field itself would exceed `max_bytes`
    (a 28x28 grayscale PNG is under 1 KB: the cap is a guard)."""
    buf = io.BytesIO()
    Image.fromarray(pre.pixels, mode="L").save(buf, format="PNG", optimize=True)
    encoded = base64.b64encode(buf.getvalue())
    if len(encoded) > max_bytes:
        return None
    return encoded.decode("ascii")
