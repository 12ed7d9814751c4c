"""The correction control under a `/read` reply ("It was a …", issue 14), without discord types:
its options, who may use it, how long it stays, and what the bot says after a pick. Pure.

A pick becomes `POST /v1/feedback` (`Commands.correct`); `discord_app.py` draws the control as a
select menu of the ten digits and applies `CorrectionOutcome.closed` to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from handwriting_ai.bot.replies import error_reply, retry_in
from handwriting_ai.client import Reading, ServiceError

PLACEHOLDER = "It was a …"
NOT_YOURS = "Only the person who asked can correct this reading."
NOT_A_DIGIT = "Please pick one digit from 0 to 9."
NOT_CONFIGURED = "Corrections are not configured."
# Discord's interaction token (what edits a reply) lasts 15 minutes; a read's sample is kept
# `FEEDBACK__SAMPLE_TTL_S` (an hour by default): the control goes at the sooner of the two.
CONTROL_TIMEOUT_S = 15 * 60.0


@frozen
class DigitOption:
    """One entry of the control: `label` is shown, `value` comes back with the pick."""

    label: str
    value: str
    description: str | None = None


@frozen
class Correctable:
    """A reading that may be corrected: the read's `request_id`, who asked for it, what it read."""

    request_id: str
    owner_id: int
    predicted: int


@frozen
class CorrectionOutcome:
    """`text` goes privately to the user; `closed`, when set, is the control's last words (it is
    disabled with that text: nothing another pick could change), None when a pick may still work."""

    text: str
    closed: str | None = None


def correctable(reading: Reading, owner_id: int) -> Correctable | None:
    """The reading's correction target, or None from a service that sends no `request_id`."""
    if not reading.request_id:
        return None
    return Correctable(reading.request_id, owner_id, reading.digit)


def control_timeout_s(sample_ttl_s: int) -> float | None:
    """How long the control stays; None: no control (the service keeps no sample to correct)."""
    if sample_ttl_s <= 0:
        return None
    return min(CONTROL_TIMEOUT_S, float(sample_ttl_s))


def digit_options(predicted: int) -> tuple[DigitOption, ...]:
    """0 to 9 in order; the digit the bot read says so (picking it confirms the reading)."""
    return tuple(
        DigitOption(str(d), str(d), "What I read" if d == predicted else None) for d in range(10)
    )


def may_correct(target: Correctable, user_id: int) -> bool:
    """Only the person who asked: the correction goes into training under their id."""
    return user_id == target.owner_id


def label_of(values: Sequence[str]) -> int | None:
    """The picked digit, or None for anything but exactly one of "0" to "9"."""
    if len(values) != 1 or values[0] not in {str(d) for d in range(10)}:
        return None
    return int(values[0])


def a_digit(digit: int) -> str:
    return f"an {digit}" if digit == 8 else f"a {digit}"


def saved(label: int) -> CorrectionOutcome:
    return CorrectionOutcome(
        f"Thanks — saved as {a_digit(label)}: it will help the next training run with corrections.",
        closed=f"Corrected: it was {a_digit(label)}",
    )


def refused(error: ServiceError) -> CorrectionOutcome:
    """The service's refusal in the bot's usual wording; the control closes when no later pick
    could succeed (already corrected, too old)."""
    if error.code == "conflict":
        return CorrectionOutcome("That reading was already corrected.", "Already corrected")
    if error.code == "not_found":
        return CorrectionOutcome("That reading is too old to correct now.", "Too old to correct")
    if error.code == "rate_limited":
        when = retry_in(error.retry_after_s)
        return CorrectionOutcome(f"Too many corrections right now. Please try again {when}.")
    if error.code == "queue_unavailable":
        if "not configured" in error.message:
            return CorrectionOutcome(NOT_CONFIGURED)
        return CorrectionOutcome("Corrections are unavailable right now. Please try again later.")
    if error.code == "invalid_request":
        return CorrectionOutcome(f"That correction was refused: {error.message}")
    return CorrectionOutcome(error_reply(error))
