"""The bot's own Redis keys, in one place. Each bot (`BOT__NAME`) has its own namespace, so two
bots on one Redis neither share a cursor nor edit each other's messages."""

from __future__ import annotations

from handwriting_ai.streams.keys import STATUS_TTL_S

# A tracked job's message is forgotten this long after it was last touched, even without a final
# event (a job whose status expired): as long as the job's own status is kept.
MESSAGE_TTL_S = STATUS_TTL_S


def cursor_key(bot: str) -> str:
    """The id of the last `digits:events` entry the bot has handled: a restart goes on from it."""
    return f"digits:bot:{bot}:cursor"


def jobs_key(bot: str) -> str:
    """Set of the request_ids whose progress message the bot is still editing."""
    return f"digits:bot:{bot}:jobs"


def message_key(bot: str, request_id: str) -> str:
    """Hash `channel_id`, `message_id`, `model_id` of a job's progress message."""
    return f"digits:bot:{bot}:job:{request_id}"
