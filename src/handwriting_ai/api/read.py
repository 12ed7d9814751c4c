"""`POST /v1/read`: parse the form, run one read in the executor, shape the answer."""

from __future__ import annotations

import time
from functools import partial

from litestar import Request, post
from litestar.datastructures import State, UploadFile
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from multipart import ParserLimitReached  # type: ignore[import-untyped]

from handwriting_ai.api.admission import (
    INLINE_MAX_PIXELS,
    READS_WAITING_KEY,
    Admitted,
    ReadsWaiting,
)
from handwriting_ai.api.openapi import READ_FORM, documented
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.api.security import require_api_key
from handwriting_ai.api.state import AppState
from handwriting_ai.contracts.converter import parse_bool
from handwriting_ai.errors import (
    BadDimensionsError,
    InvalidImageError,
    InvalidRequestError,
    MalformedFormError,
    NotReadyError,
    OverloadedError,
    PredictTimeoutError,
    PreprocessingFailedError,
    TooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from handwriting_ai.inference.engine import Ensemble
from handwriting_ai.inference.read import Reading, read_digit
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing import PreprocessOptions
from handwriting_ai.preprocessing.decode import limits_of, source_pixels
from handwriting_ai.settings import DigitsSettings

log = get_logger("handwriting_ai.read")
_FLAGS = ("invert", "center", "visualize")
FORM_PART_LIMIT = 16  # file, three flags and room to spare


def _flag(form: dict[str, str], name: str) -> bool | None:
    raw = form.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse_bool(raw)
    except ValueError:
        raise InvalidRequestError(
            f"Field '{name}' must be true or false, got {raw[:32]!r}."
        ) from None


def _mb(request: Request[object, object, State]) -> str:
    return f"{AppState.of(request.app.state).settings.digits.max_image_mb:g}"


async def _parse_form(request: Request[object, object, State]) -> tuple[UploadFile, dict[str, str]]:
    if request.content_type[0] != "multipart/form-data":
        raise MalformedFormError("Expected multipart/form-data with a 'file' part.")
    try:
        form = await request.form()
    except RequestEntityTooLarge:
        raise TooLargeError(f"Request body exceeds the {_mb(request)} MB upload limit.") from None
    except ClientException as exc:
        # Over the part count or a part's size: Litestar reports a limit as a 400 (its FIXME for
        # 3.0); for our clients it is a body over the limits, 413 as the error table says.
        if isinstance(exc.__context__, ParserLimitReached):
            raise TooLargeError(
                f"Multipart body over the limits (at most {FORM_PART_LIMIT} parts,"
                f" {_mb(request)} MB)."
            ) from None
        raise MalformedFormError(f"Malformed multipart body: {exc.detail}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise MalformedFormError("Missing the 'file' part (an image file).")
    flags = {k: v for k in _FLAGS if isinstance(v := form.get(k), str)}
    return upload, flags


def _reads_waiting(request: Request[object, object, State]) -> int:
    """Reads queued for the event loop behind this one (counted by `digits serve`'s edge)."""
    waiting = request.scope.get("state", {}).get(READS_WAITING_KEY)
    return waiting.count if isinstance(waiting, ReadsWaiting) else 0


async def _read(
    request: Request[object, object, State],
    admitted: Admitted,
    ensemble: Ensemble,
    digits: DigitsSettings,
) -> Reading:
    upload, form = await _parse_form(request)
    data = await upload.read()
    await upload.close()
    center = _flag(form, "center")
    options = PreprocessOptions(
        invert=_flag(form, "invert"), center=True if center is None else center
    )
    job = partial(
        read_digit,
        data,
        content_type=upload.content_type,
        ensemble=ensemble,
        limits=limits_of(digits),
        options=options,
        tta_profile=digits.tta_profile,
        uncertain_threshold=digits.uncertain_threshold,
        visualize=bool(_flag(form, "visualize")),
        visualize_max_bytes=digits.visualize_max_kb * 1024,
    )
    state = AppState.of(request.app.state)
    reads = state.reads
    pixels = source_pixels(data) if reads is not None and reads.inline_max_s > 0 else None
    inline = reads is not None and reads.inline_ok(
        pixels, ensemble, _reads_waiting(request), digits.predict_timeout_seconds
    )
    small = ensemble if pixels is not None and pixels <= INLINE_MAX_PIXELS else None
    if inline:
        reading = admitted.run_inline(job, cost_key=small)
    else:
        reading = await admitted.run(job, cost_key=small)
    state.metrics.read_ran(inline=inline)
    pre = reading.preprocessed
    log.info(
        "digit_read",
        digit=reading.digit,
        confidence=reading.confidence,
        model_id=reading.model_id,
        compute_ms=reading.compute_ms,
        image_bytes=len(data),
        inverted=pre.inverted,
        deskew_deg=pre.deskew_deg,
        components_kept=pre.components_kept,
        components_dropped=pre.components_dropped,
        lines_removed=pre.lines_removed,
    )
    return reading


@post(
    "/v1/read",
    guards=[require_api_key],
    status_code=200,
    summary="Read the handwritten digit in a PNG or JPEG image",
    **documented(
        InvalidImageError,
        BadDimensionsError,
        PreprocessingFailedError,
        InvalidRequestError,
        UnauthorizedError,
        TooLargeError,
        UnsupportedMediaTypeError,
        MalformedFormError,
        OverloadedError,
        NotReadyError,
        PredictTimeoutError,
        body=READ_FORM,
    ),
)
async def read(request: Request[object, object, State]) -> ReadResponse:
    started = time.perf_counter()
    state = AppState.of(request.app.state)
    ensemble = state.engine.ensemble
    if ensemble is None:
        raise NotReadyError("No model is loaded yet.")
    digits = state.settings.digits
    # Admitted before the upload is parsed: under overload a refusal costs almost nothing.
    admitted = state.admit_read(timeout_s=digits.predict_timeout_seconds)
    try:
        reading = await _read(request, admitted, ensemble, digits)
    finally:
        admitted.release()  # a no-op once the read was handed to a thread
    state.metrics.read_answered(reading, time.perf_counter() - started)
    request_id = str(request.scope.get("state", {}).get("request_id", ""))
    if state.samples is not None:
        state.samples.keep(request_id, reading)  # for a correction; written after we answer
    return ReadResponse(
        digit=reading.digit,
        confidence=reading.confidence,
        probs=reading.probs,
        model_id=reading.model_id,
        uncertain=reading.uncertain,
        visual_png_b64=reading.visual_png_b64,
        request_id=request_id,
    )
