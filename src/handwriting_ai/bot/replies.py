"""What the bot says: the reply to a reading (the seeds' exact format) and a short, friendly
sentence for each error. Plain text, no discord import: `digits read` prints the same lines."""

from __future__ import annotations

from handwriting_ai.client import Reading, ServiceError

LOW_CONFIDENCE_HINT = "Low confidence; try larger digits or darker ink."

_FIXED: dict[str, str] = {
    "too_large": "That image is too large. Please send a smaller PNG or JPEG (a photo of just"
    " the digit is plenty).",
    "unsupported_media_type": "I can only read PNG or JPEG images.",
    "bad_dimensions": "That image is too large or too long and thin to read. Please crop it"
    " around the digit.",
    "invalid_image": "I couldn't open that image. Please send a valid PNG or JPEG.",
    "preprocessing_failed": "I couldn't find a digit in that image. Try one dark digit on a"
    " plain light background.",
    "timeout": "The digit service took too long to answer. Please try again.",
    "unreachable": "The digit service can't be reached right now. Please try again later.",
    "not_ready": "The digit service is still starting (no model loaded yet). Please try again"
    " in a minute.",
    "unauthorized": "The digit service refused the bot's API key; the bot's configuration"
    " needs fixing.",
    "forbidden": "The digit service refused the bot's API key; the bot's configuration"
    " needs fixing.",
    "queue_full": "The training queue is full. Please try again later.",
    "not_found": "I don't know that training job (it may have expired).",
    "stream_ended": "I lost track of that training job's progress. Please check its status again.",
}
# Refusals whose message is the useful part ("Job 'x' is already completed.", "... @ $.epochs").
_WITH_MESSAGE: dict[str, str] = {
    "conflict": "That can't be done now: {message}",
    "invalid_job": "That training request was refused: {message}",
    "invalid_request": "That request was refused: {message}",
    "malformed_form": "That request was refused: {message}",
}


def reading_reply(reading: Reading) -> str:
    """`Digit: 7 (98.7% confidence). Top-3: 7=0.987, 1=0.011, 9=0.002. Model: <model_id>.`,
    then the low-confidence hint when the service marked the reading uncertain."""
    top = ", ".join(f"{digit}={prob:.3f}" for digit, prob in reading.top(3))
    reply = (
        f"Digit: {reading.digit} ({reading.confidence * 100:.1f}% confidence)."
        f" Top-3: {top}. Model: {reading.model_id}."
    )
    return f"{reply} {LOW_CONFIDENCE_HINT}" if reading.uncertain else reply


def error_reply(error: ServiceError) -> str:
    """One or two short sentences for a person; the request id where someone may need to look
    it up in the service's logs (an unexpected failure)."""
    if error.code in _FIXED:
        return _FIXED[error.code]
    if error.code in _WITH_MESSAGE:
        return _WITH_MESSAGE[error.code].format(message=error.message)
    if error.code == "overloaded":
        when = retry_in(error.retry_after_s)
        return f"The digit service is busy right now. Please try again {when}."
    if error.code == "queue_unavailable":
        if "not configured" in error.message:
            return "Training is not configured."
        return "Training is unavailable right now. Please try again later."
    if error.code in ("too_many_requests", "rate_limited"):
        return f"Too many requests. Please try again {retry_in(error.retry_after_s)}."
    return (
        "Something went wrong on the digit service's side. Please try again later"
        f" (reference {error.request_id})."
    )


def retry_in(retry_after_s: float | None) -> str:
    """A sentence's "in 3 seconds" from a `Retry-After`; "in a moment" without one."""
    if retry_after_s is None or retry_after_s <= 0:
        return "in a moment"
    seconds = max(1, round(retry_after_s))
    return f"in {seconds} second{'s' if seconds != 1 else ''}"
