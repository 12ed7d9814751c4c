"""The Discord layer, as thin as it can be: a `discord.Client` with `/read` and `/train`, message
edits for the throttled editor, the correction control under a reading, and the event follower
started in `setup_hook`. The only module that imports discord.py (the `bot` extra).

The handlers take the parts of an interaction they use (`InteractionLike`), so tests call them
with a small stand-in. Progress messages are public follow-ups of the `/train` interaction and
are edited through the channel (`PATCH /channels/{id}/messages/{id}`), not the interaction's
webhook: its token expires after 15 minutes, long before most training jobs end.

The correction control is a select menu ("It was a …", 0 to 9) rather than ten buttons: one row
instead of two under every reading, and a wrong tap needs a second, deliberate one. A pick is
answered on the pick's own interaction (a fresh token): privately with the outcome, and the
control is disabled in place once nothing else can be picked. When it times out it is removed
through the channel, like a progress message: by then the `/read` token may have expired.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

import discord
from discord import app_commands
from redis.asyncio import Redis

from handwriting_ai.aio import cancel_and_wait
from handwriting_ai.bot.commands import Attachment, Commands, TrainDefaults
from handwriting_ai.bot.corrections import (
    NOT_A_DIGIT,
    NOT_YOURS,
    PLACEHOLDER,
    Correctable,
    control_timeout_s,
    correctable,
    digit_options,
    label_of,
    may_correct,
)
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
FOLLOWER_STOP_S = 5.0  # above one XREAD block; then the follower is abandoned

RATE_LIMIT_WAIT_S = 10.0  # a longer Discord rate limit is raised to the editor, which retries
ClientT = TypeVar("ClientT", bound=discord.Client, covariant=True)


class SentMessage(Protocol):
    @property
    def id(self) -> int: ...


class ResponseLike(Protocol):
    async def send_message(self, content: str, *, ephemeral: bool = ...) -> object: ...
    async def defer(self, *, ephemeral: bool = ..., thinking: bool = ...) -> object: ...


class FollowupLike(Protocol):
    async def send(
        self,
        content: str = ...,
        *,
        ephemeral: bool = ...,
        view: discord.ui.View = ...,
        wait: Literal[True],
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


class PickLike(InteractionLike, Protocol):
    """A pick in the correction control: an interaction whose original response, once deferred,
    is the message the control is on."""

    async def edit_original_response(self, *, view: discord.ui.View | None = ...) -> object: ...


class ControlEdits(Protocol):
    async def remove_view(self, ref: MessageRef) -> None: ...


class Handlers:
    """`/read`, `/train` and a pick in a reading's correction control: acknowledge within
    Discord's 3 s, then answer with `Commands`. No correction control when `control_timeout_s`
    is None; without `controls` a timed-out control stays on the message (inert)."""

    def __init__(
        self,
        commands: Commands,
        *,
        controls: ControlEdits | None = None,
        control_timeout_s: float | None = None,
    ) -> None:
        self.commands = commands
        self.controls = controls
        self.control_timeout_s = control_timeout_s

    async def read(self, interaction: InteractionLike, image: Attachment) -> None:
        refused = self.commands.precheck_read(image)
        if refused is not None:  # nothing downloaded, only the user sees it
            await interaction.response.send_message(refused.text, ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        outcome = await self.commands.read(image)
        reading, timeout_s = outcome.reading, self.control_timeout_s
        target = correctable(reading, interaction.user.id) if reading is not None else None
        if target is None or timeout_s is None:  # an error, or no control
            await interaction.followup.send(outcome.reply.text, wait=True)
            return
        control = CorrectionView(self, target, timeout_s=timeout_s)
        message = await interaction.followup.send(outcome.reply.text, view=control, wait=True)
        if interaction.channel_id is not None:
            control.ref = MessageRef(interaction.channel_id, message.id)

    async def check_owner(self, interaction: InteractionLike, target: Correctable) -> bool:
        """Whether the pick is the asker's; anyone else is told so, privately."""
        if may_correct(target, interaction.user.id):
            return True
        await interaction.response.send_message(NOT_YOURS, ephemeral=True)
        return False

    async def pick(
        self, interaction: PickLike, control: CorrectionView, values: Sequence[str]
    ) -> None:
        """The asker picked `values` (checked by `check_owner` first): correct the reading."""
        label = label_of(values)
        if label is None:
            await interaction.response.send_message(NOT_A_DIGIT, ephemeral=True)
            return
        await interaction.response.defer()  # for a component: "update", the message stays as is
        outcome = await self.commands.correct(control.target, interaction.user.id, label)
        await interaction.followup.send(outcome.text, ephemeral=True, wait=True)
        if outcome.closed is not None and not control.is_finished():  # the first to close wins
            control.close(outcome.closed)
            await interaction.edit_original_response(view=control)

    async def expire(self, control: CorrectionView) -> None:
        """The control timed out: take it off the message."""
        if control.ref is not None and self.controls is not None:
            await self.controls.remove_view(control.ref)

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


class DigitSelect(discord.ui.Select["CorrectionView"]):
    def __init__(self, predicted: int) -> None:
        options = [
            discord.SelectOption(label=o.label, value=o.value, description=o.description)
            for o in digit_options(predicted)
        ]
        super().__init__(placeholder=PLACEHOLDER, options=options, min_values=1, max_values=1)

    async def callback(self, interaction: discord.Interaction[ClientT]) -> None:
        if self.view is not None:
            await self.view.handlers.pick(interaction, self.view, self.values)


class CorrectionView(discord.ui.View):
    """The correction control under one reading; `ref` is the reply it is on, once sent."""

    def __init__(self, handlers: Handlers, target: Correctable, *, timeout_s: float) -> None:
        super().__init__(timeout=timeout_s)
        self.handlers = handlers
        self.target = target
        self.ref: MessageRef | None = None
        self.select = DigitSelect(target.predicted)
        self.add_item(self.select)

    def close(self, placeholder: str) -> None:
        """Nothing more to pick: disabled, saying why, and no longer listened to."""
        self.select.disabled = True
        self.select.placeholder = placeholder
        self.stop()

    async def interaction_check(self, interaction: discord.Interaction[ClientT], /) -> bool:
        # Here rather than in the callback: a refused pick does not extend the timeout.
        return await self.handlers.check_owner(interaction, self.target)

    async def on_timeout(self) -> None:
        await self.handlers.expire(self)


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

    async def remove_view(self, ref: MessageRef) -> None:
        """Take a message's components off; a message gone or out of reach is left as it is."""
        channel = self.client.get_partial_messageable(ref.channel_id)
        try:
            await channel.get_partial_message(ref.message_id).edit(view=None)
        except discord.HTTPException as exc:
            log.info("bot_control_not_removed", message_id=ref.message_id, error=str(exc))


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
        edits = ChannelEdits(self)
        self.editor = ThrottledEditor(edits, interval_s=bot.edit_interval_s)
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
        self.handlers = Handlers(
            self.commands,
            controls=edits,
            control_timeout_s=control_timeout_s(settings.feedback.sample_ttl_s),
        )
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
        if self._follow is not None and self.follower is not None:
            self.follower.stop()
            _, pending = await asyncio.wait({self._follow}, timeout=FOLLOWER_STOP_S)
            await cancel_and_wait(pending, timeout_s=FOLLOWER_STOP_S)
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
