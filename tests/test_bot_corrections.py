"""The correction control's pure parts, exactly: its ten options, who may pick, how long it stays,
and the sentence (and the control's last words) for every answer of `POST /v1/feedback`.
`corrections.py` must not need discord.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from handwriting_ai.bot.corrections import (
    CONTROL_TIMEOUT_S,
    NOT_CONFIGURED,
    Correctable,
    CorrectionOutcome,
    DigitOption,
    control_timeout_s,
    correctable,
    digit_options,
    label_of,
    may_correct,
    refused,
    saved,
)
from handwriting_ai.bot.replies import error_reply
from handwriting_ai.client import Reading, ServiceError

PROBS = (0.0, 0.011, 0.0, 0.0, 0.0, 0.0, 0.0, 0.987, 0.0, 0.002)
TARGET = Correctable("r1", owner_id=42, predicted=7)


def _reading(request_id: str) -> Reading:
    return Reading(7, 0.987, PROBS, "ensemble_3_models", False, None, request_id)


def _error(code: str, message: str = "m", status: int = 400, **kw: float) -> ServiceError:
    return ServiceError(status, code, message, "req-42", retry_after_s=kw.get("retry_after_s"))


def test_the_options_are_the_ten_digits_with_the_read_one_marked() -> None:
    options = digit_options(7)
    assert [(o.label, o.value) for o in options] == [(str(d), str(d)) for d in range(10)]
    assert options[7] == DigitOption("7", "7", "What I read")
    assert [o.description for o in options if o.value != "7"] == [None] * 9


def test_a_reading_is_correctable_by_its_asker_only() -> None:
    assert correctable(_reading("r1"), 42) == TARGET
    assert correctable(_reading(""), 42) is None  # a service that names no request_id
    assert may_correct(TARGET, 42)
    assert not may_correct(TARGET, 43)


@pytest.mark.parametrize(
    ("values", "label"),
    [
        (["4"], 4),
        (["0"], 0),
        (["9"], 9),
        ([], None),
        (["4", "5"], None),
        (["x"], None),
        (["10"], None),
        (["-1"], None),
        ([" 4"], None),
    ],
)
def test_the_pick_is_one_digit(values: list[str], label: int | None) -> None:
    assert label_of(values) == label


def test_the_control_stays_15_minutes_or_while_the_sample_is_kept() -> None:
    assert CONTROL_TIMEOUT_S == 900.0
    assert control_timeout_s(3600) == 900.0  # the default FEEDBACK__SAMPLE_TTL_S
    assert control_timeout_s(60) == 60.0
    assert control_timeout_s(0) is None  # no sample kept: nothing to correct, no control


def test_a_saved_correction_thanks_the_user_and_closes_the_control() -> None:
    assert saved(4) == CorrectionOutcome(
        "Thanks — saved as a 4: it will help the next training run with corrections.",
        closed="Corrected: it was a 4",
    )
    assert saved(8).text.startswith("Thanks — saved as an 8: ")
    assert saved(8).closed == "Corrected: it was an 8"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (
            _error("conflict", "The read 'r1' was already corrected as 4.", 409),
            CorrectionOutcome("That reading was already corrected.", "Already corrected"),
        ),
        (
            _error("not_found", "No read 'r1' to correct: unknown, or older than 3600 s", 404),
            CorrectionOutcome("That reading is too old to correct now.", "Too old to correct"),
        ),
        (
            _error("rate_limited", "More than 30 corrections a minute.", 429, retry_after_s=17),
            CorrectionOutcome("Too many corrections right now. Please try again in 17 seconds."),
        ),
        (
            _error("rate_limited", "More than 30 corrections a minute.", 429),
            CorrectionOutcome("Too many corrections right now. Please try again in a moment."),
        ),
        (
            _error(
                "queue_unavailable", "The training queue is not configured (set REDIS_URL).", 503
            ),
            CorrectionOutcome(NOT_CONFIGURED),
        ),
        (
            _error("queue_unavailable", "The training queue (Redis) is unreachable.", 503),
            CorrectionOutcome("Corrections are unavailable right now. Please try again later."),
        ),
        (
            _error("invalid_request", "'label' must be an integer from 0 to 9."),
            CorrectionOutcome(
                "That correction was refused: 'label' must be an integer from 0 to 9."
            ),
        ),
        (
            _error("unreachable", "connection refused", 0),
            CorrectionOutcome(
                "The digit service can't be reached right now. Please try again later."
            ),
        ),
        (
            _error("internal_error", "boom", 500),
            CorrectionOutcome(
                "Something went wrong on the digit service's side. Please try again later"
                " (reference req-42)."
            ),
        ),
    ],
)
def test_each_refusal_in_the_bots_words(error: ServiceError, outcome: CorrectionOutcome) -> None:
    assert refused(error) == outcome
    assert NOT_CONFIGURED == "Corrections are not configured."


def test_rate_limited_is_one_of_the_bots_usual_errors() -> None:
    assert error_reply(_error("rate_limited", status=429, retry_after_s=1)) == (
        "Too many requests. Please try again in 1 second."
    )


def test_corrections_do_not_import_discord() -> None:
    probe = "import sys, handwriting_ai.bot.corrections; print('discord' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
