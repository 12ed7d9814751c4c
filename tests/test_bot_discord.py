"""The Discord layer's `/read` and `/train` handlers and a reading's correction control, called
with a minimal stand-in for the interaction (the only stand-in) against the live API over HTTP and
a real Redis; the command tree `DigitsBot` registers; `digits bot` without the extra or a token;
`digits up` without a token."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from attrs import define, field
from PIL import Image

import stream_helpers
from handwriting_ai import cli
from handwriting_ai.api.app import create_app
from handwriting_ai.bot.commands import Commands, TrainDefaults
from handwriting_ai.bot.corrections import NOT_YOURS
from handwriting_ai.bot.discord_app import CorrectionView, DigitsBot, Handlers
from handwriting_ai.bot.editor import MessageRef, ThrottledEditor
from handwriting_ai.bot.follower import Follower
from handwriting_ai.bot.keys import jobs_key, message_key
from handwriting_ai.bot.main import INSTALL_HINT, NO_TOKEN
from handwriting_ai.bot.ratelimit import RateLimiter
from handwriting_ai.client import AsyncClient
from handwriting_ai.contracts.feedback import correction_from_fields
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.settings import Settings, load_settings
from handwriting_ai.streams.keys import FEEDBACK_STREAM, JOBS_STREAM, read_sample_key
from handwriting_ai.supervisor import child_specs
from handwriting_ai.supervisor.up import bot_api_key, bot_wanted, child_environment
from helpers import make_settings, png_bytes, seven, write_artifact
from stream_helpers import sync_redis, wait_for, xrange
from test_bot_editor import Recorder
from worker_support import API_KEY, serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

USER, CHANNEL = 123456789012345678, 998877665544332211
READING = re.compile(
    r"^Digit: (\d) \(\d{1,3}\.\d% confidence\)\. Top-3: \d=\d\.\d{3}, \d=\d\.\d{3}, \d=\d\.\d{3}\."
    r" Model: tiny_seven\.( Low confidence; try larger digits or darker ink\.)?$"
)


# ------------------------------------------------------------------- the stand-in interaction


@define
class Sent:
    id: int


@define
class Response:
    calls: list[tuple[str, str, bool, bool]]  # (kind, content, ephemeral, thinking)

    async def send_message(self, content: str, *, ephemeral: bool = False) -> object:
        self.calls.append(("send_message", content, ephemeral, False))
        return None

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> object:
        self.calls.append(("defer", "", ephemeral, thinking))
        return None


@define
class Followup:
    calls: list[tuple[str, str, bool, bool]]
    views: list[object]

    async def send(
        self,
        content: str = "",
        *,
        ephemeral: bool = False,
        view: object = None,
        wait: Literal[True],
    ) -> Sent:
        self.calls.append(("followup", content, ephemeral, False))
        self.views.append(view)
        return Sent(5000 + len(self.calls))


@define
class User:
    id: int


@define
class Interaction:
    """What discord.py hands a command: records every answer, in order."""

    calls: list[tuple[str, str, bool, bool]] = field(factory=list)
    user: User = field(factory=lambda: User(USER))
    channel_id: int | None = CHANNEL
    views: list[object] = field(factory=list)  # the view sent with each follow-up, or edited in

    @property
    def response(self) -> Response:
        return Response(self.calls)

    @property
    def followup(self) -> Followup:
        return Followup(self.calls, self.views)

    async def edit_original_response(self, *, view: object = None) -> object:
        self.calls.append(("edit_original_response", "", False, False))
        self.views.append(view)
        return None


@define
class Upload:
    """An attachment as Discord describes it; `downloads` counts `read()`s."""

    data: bytes
    filename: str = "digit.png"
    content_type: str | None = "image/png"
    downloads: int = 0

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self) -> bytes:
        self.downloads += 1
        return self.data


# ------------------------------------------------------------------------------ set-up


@pytest.fixture
def models(tmp_path: Path) -> Path:
    model_dir = tmp_path / "models"
    write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)
    return model_dir


def settings_for(model_dir: Path, **extra: str) -> Settings:
    return make_settings(model_dir, ["tiny_seven"], {"SECURITY__API_KEY": API_KEY, **extra})


@define
class Controls:
    """`ControlEdits`: records the messages whose control was removed."""

    removed: list[MessageRef] = field(factory=list)

    async def remove_view(self, ref: MessageRef) -> None:
        self.removed.append(ref)


def handlers(
    settings: Settings,
    url: str,
    follower: Follower | None = None,
    *,
    controls: Controls | None = None,
    control_timeout_s: float | None = None,
) -> tuple[Handlers, AsyncClient]:
    api = AsyncClient(url, api_key=API_KEY, retry_delay_s=0.05)
    commands = Commands(
        api,
        limits=limits_of(settings.digits),
        limiter=RateLimiter(settings.bot.train_per_user, settings.bot.train_window_s),
        defaults=TrainDefaults(model_id=settings.bot.train_model_id),
        follower=follower,
    )
    made = Handlers(commands, controls=controls, control_timeout_s=control_timeout_s)
    return made, api


@pytest.fixture
def api_url(models: Path) -> Iterator[str]:
    with serve_app(create_app(settings_for(models))) as url:
        yield url


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------- /read


async def test_read_replies_in_the_seeds_format_after_deferring(models: Path, api_url: str) -> None:
    handler, api = handlers(settings_for(models), api_url)
    interaction = Interaction()
    await handler.read(interaction, Upload(png_bytes(seven())))
    (defer, reply) = interaction.calls
    assert defer == ("defer", "", False, True)  # "thinking…" in public: the reply is public
    kind, text, ephemeral, _ = reply
    assert (kind, ephemeral) == ("followup", False)
    found = READING.match(text)
    assert found is not None, text
    assert found.group(1) == "7"
    await api.aclose()


async def test_read_refuses_type_and_size_without_downloading(models: Path, api_url: str) -> None:
    settings = settings_for(models, DIGITS__MAX_IMAGE_MB="0.001")  # 1,048 bytes
    handler, api = handlers(settings, api_url)
    gif = Upload(b"GIF89a" + b"\x00" * 100, filename="d.gif", content_type="image/gif")
    big = Upload(png_bytes(seven()))
    for upload, expected in (
        (gif, "I can only read PNG or JPEG images."),
        (big, "That image is too large. Please send a smaller PNG or JPEG"),
    ):
        interaction = Interaction()
        await handler.read(interaction, upload)
        ((kind, text, ephemeral, _),) = interaction.calls  # no defer: answered at once
        assert (kind, ephemeral) == ("send_message", True)
        assert text.startswith(expected)
        assert upload.downloads == 0
    await api.aclose()


async def test_read_checks_dimensions_from_the_header_before_uploading(models: Path) -> None:
    # The API is unreachable: had the image been uploaded, the reply would say so.
    settings = settings_for(models, DIGITS__MAX_IMAGE_PIXELS="5000", DIGITS__MAX_IMAGE_SIDE_PX="90")
    handler, api = handlers(settings, "http://127.0.0.1:9")
    cases = (
        (png_of(91, 10), "That image is too large or too long and thin to read."),  # side
        (png_of(80, 80), "That image is too large. Please send"),  # pixels
        (png_of(60, 2), "That image is too large or too long and thin to read."),  # aspect 30
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "I couldn't open that image."),
    )
    for data, expected in cases:
        interaction = Interaction()
        upload = Upload(data)
        await handler.read(interaction, upload)
        assert upload.downloads == 1
        (defer, (kind, text, ephemeral, _)) = interaction.calls
        assert (defer[0], kind, ephemeral) == ("defer", "followup", False)
        assert text.startswith(expected), text
    # A good image does go out: the unreachable service is what it reports.
    interaction = Interaction()
    await handler.read(interaction, Upload(png_of(40, 40)))
    assert interaction.calls[-1][1].startswith("The digit service can't be reached right now.")
    await api.aclose()


# ------------------------------------------------------------------- the correction control


async def _read_with_control(handler: Handlers) -> tuple[CorrectionView, Interaction]:
    """A `/read` of a seven: the reply and the control sent with it."""
    interaction = Interaction()
    await handler.read(interaction, Upload(png_bytes(seven())))
    (_, (kind, text, ephemeral, _)) = interaction.calls
    control = interaction.views[-1]
    assert (kind, ephemeral) == ("followup", False)
    assert READING.match(text) is not None, text
    assert isinstance(control, CorrectionView)
    return control, interaction


async def _pick(handler: Handlers, control: CorrectionView, user: int, label: str) -> Interaction:
    """What discord.py does with a pick: the view's `interaction_check`, then the callback."""
    interaction = Interaction(user=User(user))
    if await handler.check_owner(interaction, control.target):
        await handler.pick(interaction, control, [label])
    return interaction


async def test_a_reading_is_corrected_through_its_control_onto_the_feedback_stream(
    models: Path, redis_url: str
) -> None:
    settings = settings_for(models, REDIS_URL=redis_url)
    controls = Controls()
    with serve_app(create_app(settings)) as url:
        handler, api = handlers(settings, url, controls=controls, control_timeout_s=900.0)
        control, _ = await _read_with_control(handler)
        # "It was a …" with the ten digits, the read one marked, for 15 minutes.
        select = control.select
        assert select.placeholder == "It was a …"
        assert [(o.label, o.value) for o in select.options] == [(str(d), str(d)) for d in range(10)]
        assert [o.value for o in select.options if o.description == "What I read"] == ["7"]
        assert control.timeout == 900.0
        assert control.target.owner_id == USER
        assert control.ref == MessageRef(CHANNEL, 5002)
        rid = control.target.request_id
        with sync_redis(redis_url) as r:
            wait_for(lambda: bool(r.exists(read_sample_key(rid))), what="the sample to be kept")

        # Someone else: refused privately, nothing sent to the service.
        other = await _pick(handler, control, USER + 1, "1")
        assert other.calls == [("send_message", NOT_YOURS, True, False)]
        assert xrange(redis_url, FEEDBACK_STREAM) == []

        # The asker: acknowledged, thanked privately, the control disabled in place.
        mine = await _pick(handler, control, USER, "4")
        assert mine.calls == [
            ("defer", "", False, False),
            (
                "followup",
                "Thanks — saved as a 4: it will help the next training run with corrections.",
                True,
                False,
            ),
            ("edit_original_response", "", False, False),
        ]
        assert mine.views[-1] is control
        assert select.disabled
        assert select.placeholder == "Corrected: it was a 4"
        assert control.is_finished()
        ((_, fields),) = xrange(redis_url, FEEDBACK_STREAM)
        correction = correction_from_fields(fields)
        assert (correction.request_id, correction.label, correction.predicted) == (rid, 4, 7)
        assert (correction.user_id, correction.model_id) == (USER, "tiny_seven")

        # A second pick (a double click, or a second bot): the service keeps the first.
        again = await _pick(handler, control, USER, "5")
        assert again.calls[1:] == [("followup", "That reading was already corrected.", True, False)]
        assert select.placeholder == "Corrected: it was a 4"  # the first pick's words stay
        assert len(xrange(redis_url, FEEDBACK_STREAM)) == 1

        # Another reading's control that nobody used: taken off its message when it times out.
        unused, _ = await _read_with_control(handler)
        await unused.on_timeout()
        assert controls.removed == [MessageRef(CHANNEL, 5002)]
        unused.stop()
        await api.aclose()


async def test_a_correction_without_redis_on_the_api_is_not_configured(
    models: Path, api_url: str
) -> None:
    handler, api = handlers(settings_for(models), api_url, control_timeout_s=60.0)
    control, _ = await _read_with_control(handler)
    assert control.timeout == 60.0
    picked = await _pick(handler, control, USER, "4")
    assert picked.calls[1:] == [("followup", "Corrections are not configured.", True, False)]
    assert not control.select.disabled  # a later pick may work: the control stays
    control.stop()
    await api.aclose()


async def test_no_control_without_a_timeout_or_under_an_error(models: Path, api_url: str) -> None:
    handler, api = handlers(settings_for(models), api_url)  # control_timeout_s None
    interaction = Interaction()
    await handler.read(interaction, Upload(png_bytes(seven())))
    assert interaction.views == [None]
    handler, api2 = handlers(settings_for(models), "http://127.0.0.1:9", control_timeout_s=60.0)
    interaction = Interaction()
    await handler.read(interaction, Upload(png_of(40, 40)))
    assert interaction.calls[-1][1].startswith("The digit service can't be reached right now.")
    assert interaction.views == [None]
    await api.aclose()
    await api2.aclose()


# ------------------------------------------------------------------------------ /train


async def test_train_queues_the_defaults_posts_progress_and_rate_limits(
    models: Path, redis_url: str
) -> None:
    from redis.asyncio import Redis as AsyncRedis

    settings = settings_for(models, REDIS_URL=redis_url, BOT__TRAIN_PER_USER="1")
    r = AsyncRedis.from_url(redis_url, decode_responses=True)
    chat = Recorder()
    follower = Follower(r, ThrottledEditor(chat, interval_s=0.05), bot="t", block_ms=100)
    with serve_app(create_app(settings)) as url:
        handler, api = handlers(settings, url, follower)
        interaction = Interaction()
        await handler.train(interaction)
        defer, queued, progress = interaction.calls
        assert defer == ("defer", "", True, True)  # only the user sees "thinking…"
        found = re.fullmatch(
            r"Training queued: `mnist_digitnet_v1`, 1 epoch\. Request id: `([0-9a-f]{32})`\.",
            queued[1],
        )
        assert found is not None, queued
        assert queued[2] is True  # ephemeral
        rid = found.group(1)
        assert progress == (
            "followup",
            f"**Training `mnist_digitnet_v1`** · request `{rid}`\nQueued: waiting for a worker.",
            False,
            False,
        )
        # The job as the seeds define /train's defaults, with the user's id.
        ((_, job),) = xrange(redis_url, JOBS_STREAM)
        assert job == {
            "type": "digits.train.v1",
            "request_id": rid,
            "user_id": str(USER),
            "model_id": "mnist_digitnet_v1",
            "epochs": "1",
            "batch_size": "256",
            "lr": "0.0015",
            "seed": "42",
            "augment": "true",
            "notes": "requested via /train",
        }
        # The message is kept in Redis for the follower (and a restarted bot).
        assert await r.smembers(jobs_key("t")) == {rid}
        assert await r.hgetall(message_key("t", rid)) == {
            "channel_id": str(CHANNEL),
            "message_id": "5003",
            "model_id": "mnist_digitnet_v1",
        }
        # A second /train within the hour: refused, nothing queued.
        again = Interaction()
        await handler.train(again)
        assert again.calls[1] == (
            "followup",
            "You can start 1 training job every hour. Please try again in 60 minutes.",
            True,
            False,
        )
        assert len(again.calls) == 2
        assert sync_redis(redis_url).xlen(JOBS_STREAM) == 1
        # Another user is not limited by the first one.
        other = Interaction(user=User(USER + 1))
        await handler.train(other)
        assert other.calls[1][1].startswith("Training queued:")
        await api.aclose()
    await follower.editor.aclose()
    await r.aclose()


async def test_train_without_redis_on_the_api_is_not_configured(models: Path, api_url: str) -> None:
    handler, api = handlers(settings_for(models, BOT__TRAIN_PER_USER="1"), api_url)
    for _ in range(2):  # a refused job does not count against the user's limit
        interaction = Interaction()
        await handler.train(interaction)
        assert interaction.calls[1:] == [("followup", "Training is not configured.", True, False)]
    await api.aclose()


# ------------------------------------------------------------------- the bot and the CLI


async def test_the_bot_registers_read_and_train(models: Path) -> None:
    settings = settings_for(models, BOT__TOKEN="not-a-real-token")
    api = AsyncClient("http://127.0.0.1:9")
    bot = DigitsBot(settings, api=api, redis=None)
    commands = {c.name: c for c in bot.tree.get_commands()}
    assert sorted(commands) == ["read", "train"]
    read = commands["read"]
    assert [p.name for p in getattr(read, "parameters", [])] == ["image"]
    assert bot.follower is None  # no Redis: /train posts no progress message
    assert bot.handlers.control_timeout_s == 900.0  # a reading's correction control: 15 minutes
    await bot.close()


def test_digits_bot_needs_the_extra_and_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("APP__DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("BOT__TOKEN", raising=False)
    assert cli.main(["bot"]) == 2
    assert capsys.readouterr().err.strip() == NO_TOKEN
    monkeypatch.setenv("BOT__TOKEN", "x")
    monkeypatch.setitem(sys.modules, "discord", None)  # as if the `bot` extra were missing
    assert cli.main(["bot"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == INSTALL_HINT
    assert "pip install -e '.[bot]'" in err


def test_digits_up_starts_the_bot_only_with_a_token() -> None:
    env = {"PATH": "/bin"}
    assert not bot_wanted(load_settings({}))
    assert bot_wanted(load_settings({"BOT__TOKEN": "t"}))
    names = [s.name for s in child_specs(env, host="127.0.0.1", port=1, workers=1)]
    assert names == ["api", "worker-1"]
    assert bot_api_key(load_settings({})) is None
    key = bot_api_key(load_settings({"BOT__TOKEN": "t", "SECURITY__API_KEY": "api-key"}))
    up_env = child_environment(env, redis_url="redis://r", api_url="http://a", upload_key="upload")
    with_bot = child_specs(up_env, host="127.0.0.1", port=1, workers=1, bot_api_key=key)
    assert [s.name for s in with_bot] == ["api", "worker-1", "bot"]
    assert with_bot[-1].argv[1:] == ("-m", "handwriting_ai.cli", "bot")
    # Workers upload with the upload key; the bot reads with the API key (the upload key would
    # be a 401 on /v1/read when SECURITY__API_KEY is set, and it must not leave the workers).
    assert with_bot[1].env["HANDWRITING_API_KEY"] == "upload"
    assert with_bot[-1].env["HANDWRITING_API_KEY"] == "api-key"
    assert with_bot[-1].env["HANDWRITING_API_URL"] == "http://a"
    no_key = bot_api_key(load_settings({"BOT__TOKEN": "t"}))
    assert no_key == ""
    plain = child_specs(up_env, host="127.0.0.1", port=1, workers=0, bot_api_key=no_key)
    assert plain[-1].env["HANDWRITING_API_KEY"] == ""
