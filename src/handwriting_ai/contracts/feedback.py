"""A correction `digits.feedback.v1`: "the read `request_id` was a `label`", kept on the stream
`digits:feedback` with the 28×28 sample the models saw, so that a training job with
`use_feedback` learns from it without the upload.

An entry is flat string fields, like a job (`redis-cli XRANGE digits:feedback - +` reads it).
The sample is the preprocessed image (28×28 uint8, ink bright on black, row-major), base64.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Container, Iterable, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
from attrs import field, frozen

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TS_PATTERN
from handwriting_ai.contracts.fields import (
    doc,
    raise_on_bad_fields,
    structure_readable,
    to_fields,
)
from handwriting_ai.contracts.jobs import REQUEST_ID_PATTERN, SAFE_ID_PATTERN

FEEDBACK_TYPE = "digits.feedback.v1"
SAMPLE_SIDE = 28
SAMPLE_BYTES = SAMPLE_SIDE * SAMPLE_SIDE
_B64_CHARS = 4 * -(-SAMPLE_BYTES // 3)
U8 = npt.NDArray[np.uint8]


@frozen(kw_only=True)
class Correction:
    """A person said what digit an earlier read was; the sample is the one the models saw."""

    type: Literal["digits.feedback.v1"] = field(
        default="digits.feedback.v1", metadata=doc("Message type.")
    )
    request_id: str = field(
        metadata=doc("The read's request_id (one correction per read).", pattern=REQUEST_ID_PATTERN)
    )
    label: int = field(metadata=doc("The right digit.", minimum=0, maximum=9))
    predicted: int = field(metadata=doc("The digit the service read.", minimum=0, maximum=9))
    confidence: float = field(
        metadata=doc("The service's confidence in `predicted`.", minimum=0, maximum=1)
    )
    model_id: str = field(metadata=doc("The model (or ensemble) that read it."))
    user_id: int = field(
        default=0, metadata=doc("Who corrected it; 0 when unknown.", minimum=0, maximum=2**63 - 1)
    )
    ts: str = field(metadata=doc("When it was corrected, ISO 8601 UTC.", pattern=TS_PATTERN))
    sample: str = field(
        metadata=doc(
            "The 28×28 preprocessed image, uint8 row-major, ink bright on black, base64.",
            max_length=_B64_CHARS,
        )
    )

    def __attrs_post_init__(self) -> None:
        raise_on_bad_fields(self)

    def pixels(self) -> U8:
        return decode_sample(self.sample)


def encode_sample(pixels: U8) -> str:
    if pixels.shape != (SAMPLE_SIDE, SAMPLE_SIDE) or pixels.dtype != np.uint8:
        raise ValueError(f"a sample is 28x28 uint8, got {pixels.shape} {pixels.dtype}")
    return base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode("ascii")


def decode_sample(text: str) -> U8:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError(["expected base64 @ $.sample"]) from None
    if len(raw) != SAMPLE_BYTES:
        raise ContractError([f"expected {SAMPLE_BYTES} bytes, got {len(raw)} @ $.sample"])
    return np.frombuffer(raw, dtype=np.uint8).reshape(SAMPLE_SIDE, SAMPLE_SIDE).copy()


def correction_fields(correction: Correction) -> dict[str, str]:
    return to_fields(correction)


def correction_from_fields(fields: Mapping[str, str]) -> Correction:
    """Read an entry strictly; `ContractError` with `reason @ $.path` strings if malformed."""
    if fields.get("type", FEEDBACK_TYPE) != FEEDBACK_TYPE:
        raise ContractError([f"expected {FEEDBACK_TYPE!r}, got {fields.get('type')!r} @ $.type"])
    correction = structure_readable(dict(fields), Correction)
    correction.pixels()  # the sample must decode, not only have the right length
    return correction


def fold_corrections(
    into: dict[str, Correction],
    rows: Iterable[tuple[str, Mapping[str, str]]],
    *,
    wanted: Container[str] | None = None,
) -> list[tuple[str, list[str]]]:
    """Fold `digits:feedback` entries into `into` by read (`wanted` ones only, if given): a
    later correction of a read replaces an earlier one and takes its place in the order. Pure;
    returns the malformed entries as (entry id, reasons). The one reading of the stream for the
    worker (what a job trains on) and the API (what the gate measures)."""
    malformed: list[tuple[str, list[str]]] = []
    for entry_id, fields in rows:
        if wanted is not None and fields.get("request_id") not in wanted:
            continue
        try:
            correction = correction_from_fields(fields)
        except ContractError as exc:
            malformed.append((entry_id, exc.errors))
            continue
        into.pop(correction.request_id, None)
        into[correction.request_id] = correction
    return malformed


__all__ = ["SAFE_ID_PATTERN", "Correction", "correction_fields", "correction_from_fields"]
