"""`digits bot`: check what the bot needs (the `bot` extra, a token), find Redis, run it.

Exit status: 2 without discord.py, without `BOT__TOKEN`, or when Discord refuses the token.
Without Redis (no `REDIS_URL`, no embedded one of `digits up`) `/read` works and `/train` queues
jobs, but no progress message is posted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from typing import TextIO

from handwriting_ai.settings import Settings

INSTALL_HINT = (
    "digits bot: discord.py is not installed; install the bot extra:"
    " pip install -e '.[bot]' (or run it through ./dev, whose environment has it)"
)
NO_TOKEN = (
    "digits bot: no BOT__TOKEN: create a bot in the Discord developer portal"
    " (https://discord.com/developers/applications) and set BOT__TOKEN to its token"
)


def problem(settings: Settings) -> str | None:
    """Why the bot cannot start, or None."""
    if importlib.util.find_spec("discord") is None:
        return INSTALL_HINT
    if not settings.bot.token:
        return NO_TOKEN
    return None


def run(settings: Settings, redis_url: str | None, *, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    said = problem(settings)
    if said is not None:
        print(said, file=err)
        return 2
    if redis_url is None:
        print("digits bot: no Redis: /train posts no progress messages", file=err)
    from handwriting_ai.bot.discord_app import run_bot

    return asyncio.run(run_bot(settings, redis_url))
