"""The Discord layer, as thin as it can be: a `discord.Client` with `/read` and `/train`, message
edits for the throttled editor, and the event follower started in `setup_hook`. The only module
that imports discord.py (the `bot` extra).

The handlers take the parts of an interaction they use (`InteractionLike`), so tests call them
with a small stand-in. Progress messages are public follow-ups of the `/train` interaction and
are edited through the channel (`PATCH /channels/{id}/messages/{id}`), not the interaction's
webhook: its token expires after 15 minutes, long before most training jobs end.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Literal, Protocol

import discord
from discord import app_commands
from redis.asyncio import Redis

from handwriting_ai.bot.commands import Attachment, Commands, TrainDefaults
from handwriting_ai.bot.editor import (
    EditGoneError,
    EditRateLimitedError,
    MessageRef,
    ThrottledEditor,
)
from handwriting_ai.bot.follower import Follower
from handwriting_ai.bot.ratelimit import RateLimiter
from handwriting_ai.client import AsyncClient
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.settings import Settings

log = get_logger(__name__)

RATE_LIMIT_WAIT_S = 10.0  # a longer Discord rate limit is raised to the editor, which retries


class SentMessage(Protocol):
    @property
    def id(self) -> int: ...


class ResponseLike(Protocol):
    async def send_message(self, content: str, *, ephemeral: bool = ...) -> object: ...
    async def defer(self, *, ephemeral: bool = ..., thinking: bool = ...) -> object: ...


class FollowupLike(Protocol):
    async def send(
        self, content: str = ..., *, ephemeral: bool = ..., wait: Literal[True]
    ) -> SentMessage: ...


class UserLike(Protocol):
    @property
    def id(self) -> int: ...


class InteractionLike(Protocol):
    """What the handlers use of a `discord.Interaction`."""

    @property
    def response(self) -> ResponseLike: ...
    @property
    def followup(self) -> FollowupLike: ...
    @property
    def user(self) -> UserLike: ...
    @property
    def channel_id(self) -> int | None: ...


class Handlers:
    """`/read` and `/train`: acknowledge within Discord's 3 s, then answer with `Commands`."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    async def read(self, interaction: InteractionLike, image: Attachment) -> None:
        refused = self.commands.precheck_read(image)
        if refused is not None:  # nothing downloaded, only the user sees it
            await interaction.response.send_message(refused.text, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        reply = await self.commands.read(image)
        await interaction.followup.send(reply.text, wait=True)

    async def train(self, interaction: InteractionLike) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await self.commands.train(interaction.user.id)
        await interaction.followup.send(outcome.reply.text, ephemeral=True, wait=True)
        channel_id = interaction.channel_id
        if outcome.request_id is None or self.commands.follower is None or channel_id is None:
            return
        text = self.commands.progress_text(outcome.request_id, outcome.model_id)
        message = await interaction.followup.send(text, wait=True)
        ref = MessageRef(channel_id, message.id)
        await self.commands.track(outcome.request_id, outcome.model_id, ref)


def register(tree: app_commands.CommandTree[discord.Client], handlers: Handlers) -> None:
    @tree.command(name="read", description="Read the handwritten digit in an image")
    @app_commands.describe(image="A PNG or JPEG photo or scan of one digit")
    async def read(interaction: discord.Interaction, image: discord.Attachment) -> None:
        await handlers.read(interaction, image)

    @tree.command(name="train", description="Train a new digit model; progress is shown here")
    async def train(interaction: discord.Interaction) -> None:
        await handlers.train(interaction)


class ChannelEdits:
    """`MessageEdits` through the bot's channel API."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client

    async def edit(self, ref: MessageRef, text: str) -> None:
        channel = self.client.get_partial_messageable(ref.channel_id)
        try:
            await channel.get_partial_message(ref.message_id).edit(content=text)
        except (discord.NotFound, discord.Forbidden) as exc:
            raise EditGoneError(str(exc)) from exc
        except discord.RateLimited as exc:
            raise EditRateLimitedError(exc.retry_after) from exc


class DigitsBot(discord.Client):
    def __init__(
        self,
        settings: Settings,
        *,
        api: AsyncClient,
        redis: Redis | None,
    ) -> None:
        # No privileged intents: slash commands arrive as interactions, not by reading messages.
        super().__init__(intents=discord.Intents.none(), max_ratelimit_timeout=RATE_LIMIT_WAIT_S)
        bot = settings.bot
        self.guild_id = bot.guild_id
        self.api = api
        self.redis = redis
        self.editor = ThrottledEditor(ChannelEdits(self), interval_s=bot.edit_interval_s)
        self.follower = (
            Follower(redis, self.editor, bot=bot.name, block_ms=settings.streams.block_ms)
            if redis is not None
            else None
        )
        self.commands = Commands(
            api,
            limits=limits_of(settings.digits),
            limiter=RateLimiter(bot.train_per_user, bot.train_window_s),
            defaults=TrainDefaults(model_id=bot.train_model_id),
            follower=self.follower,
        )
        self.handlers = Handlers(self.commands)
        self.tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(self)
        register(self.tree, self.handlers)
        self._follow: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        if self.follower is not None:
            self._follow = asyncio.create_task(self.follower.run(), name="bot-follower")
        if self.guild_id:
            guild = discord.Object(id=self.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        log.info("bot_ready", guild_id=self.guild_id or None, follower=self.follower is not None)

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
        await self.editor.aclose()
        await self.api.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await super().close()


async def run_bot(settings: Settings, redis_url: str | None) -> int:
    """Log in and serve until SIGTERM/SIGINT; 2 when Discord refuses the token."""
    redis = Redis.from_url(redis_url, decode_responses=True) if redis_url else None
    bot = DigitsBot(settings, api=AsyncClient.from_settings(settings), redis=redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(settings.bot.token)
    except discord.LoginFailure as exc:
        log.error("bot_login_failed", error=str(exc))
        return 2
    return 0
