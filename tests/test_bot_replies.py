"""The bot's words, exactly: the seeds' reading format, the low-confidence hint, and one short
friendly sentence per error code. `replies.py` must not need discord.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from handwriting_ai.bot.replies import LOW_CONFIDENCE_HINT, error_reply, reading_reply
from handwriting_ai.client import Reading, ServiceError

PROBS = (0.0, 0.011, 0.0, 0.0, 0.0, 0.0, 0.0, 0.987, 0.0, 0.002)


def _reading(**changes: object) -> Reading:
    fields: dict[str, object] = {
        "digit": 7,
        "confidence": 0.987,
        "probs": PROBS,
        "model_id": "ensemble_3_models",
        "uncertain": False,
        "visual_png_b64": None,
        "request_id": "r1",
        **changes,
    }
    return Reading(**fields)  # type: ignore[arg-type]


def test_reading_reply_is_the_seeds_format() -> None:
    assert reading_reply(_reading()) == (
        "Digit: 7 (98.7% confidence). Top-3: 7=0.987, 1=0.011, 9=0.002. Model: ensemble_3_models."
    )


def test_an_uncertain_reading_gets_the_hint() -> None:
    probs = (0.05, 0.05, 0.05, 0.41, 0.05, 0.05, 0.05, 0.05, 0.19, 0.05)
    reply = reading_reply(_reading(digit=3, confidence=0.41, probs=probs, uncertain=True))
    assert reply == (
        "Digit: 3 (41.0% confidence). Top-3: 3=0.410, 8=0.190, 0=0.050. "
        "Model: ensemble_3_models. Low confidence; try larger digits or darker ink."
    )
    assert reply.endswith(LOW_CONFIDENCE_HINT)


def test_top_breaks_ties_by_the_smaller_digit() -> None:
    reading = _reading(probs=(0.1,) * 10)
    assert reading.top(3) == [(0, 0.1), (1, 0.1), (2, 0.1)]
    assert reading.top(0) == []


def _error(code: str, message: str = "m", status: int = 400, **kw: float) -> ServiceError:
    return ServiceError(status, code, message, "req-42", retry_after_s=kw.get("retry_after_s"))


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (
            "too_large",
            "That image is too large. Please send a smaller PNG or JPEG (a photo of just the"
            " digit is plenty).",
        ),
        ("unsupported_media_type", "I can only read PNG or JPEG images."),
        (
            "bad_dimensions",
            "That image is too large or too long and thin to read. Please crop it around the"
            " digit.",
        ),
        ("invalid_image", "I couldn't open that image. Please send a valid PNG or JPEG."),
        (
            "preprocessing_failed",
            "I couldn't find a digit in that image. Try one dark digit on a plain light"
            " background.",
        ),
        ("timeout", "The digit service took too long to answer. Please try again."),
        ("unreachable", "The digit service can't be reached right now. Please try again later."),
        (
            "not_ready",
            "The digit service is still starting (no model loaded yet). Please try again in a"
            " minute.",
        ),
        (
            "unauthorized",
            "The digit service refused the bot's API key; the bot's configuration needs fixing.",
        ),
        ("queue_full", "The training queue is full. Please try again later."),
        ("not_found", "I don't know that training job (it may have expired)."),
    ],
)
def test_error_reply_per_code(code: str, reply: str) -> None:
    assert error_reply(_error(code)) == reply


def test_error_replies_that_need_the_details() -> None:
    assert error_reply(_error("overloaded", status=503, retry_after_s=3)) == (
        "The digit service is busy right now. Please try again in 3 seconds."
    )
    assert error_reply(_error("overloaded", status=503, retry_after_s=1)) == (
        "The digit service is busy right now. Please try again in 1 second."
    )
    assert error_reply(_error("overloaded", status=503)) == (
        "The digit service is busy right now. Please try again in a moment."
    )
    not_configured = "The training queue is not configured (set REDIS_URL)."
    assert error_reply(_error("queue_unavailable", not_configured, 503)) == (
        "Training is not configured."
    )
    down = "The training queue (Redis) is unreachable."
    assert error_reply(_error("queue_unavailable", down, 503)) == (
        "Training is unavailable right now. Please try again later."
    )
    assert error_reply(_error("invalid_job", "expected an integer, got 'x' @ $.epochs")) == (
        "That training request was refused: expected an integer, got 'x' @ $.epochs"
    )
    assert error_reply(_error("conflict", "Job 'j' is already completed.", 409)) == (
        "That can't be done now: Job 'j' is already completed."
    )
    for code in ("internal_error", "bad_response", "something_new"):
        assert error_reply(_error(code, status=500)) == (
            "Something went wrong on the digit service's side. Please try again later"
            " (reference req-42)."
        )


def test_replies_do_not_import_discord() -> None:
    probe = "import sys, handwriting_ai.bot.replies; print('discord' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
