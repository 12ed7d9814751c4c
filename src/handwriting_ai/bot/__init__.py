"""The Discord bot: reply text, the progress renderer, the event follower and the throttled editor
are plain Python (tested for real); only `discord_app` imports discord.py (the `bot` extra)."""
