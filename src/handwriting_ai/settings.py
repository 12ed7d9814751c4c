"""One typed, frozen settings object, built once at the edge from the environment and optional TOML.

Nested keys use `SECTION__FIELD` (`APP__PORT=8081`, `DIGITS__ACTIVE_MODEL=a,b`); a few flat keys
(`REDIS_URL`, `HANDWRITING_API_URL`, `HANDWRITING_API_KEY`) keep the names operators already use.
An unknown key in a known section, or a malformed value, fails start-up with a message naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from attrs import field, frozen
from cattrs.gen import make_dict_structure_fn, override

from handwriting_ai.contracts.converter import ContractError, converter, structure

SHIPPED_MODELS = ("mnist_digitnet_a", "mnist_digitnet_c", "mnist_digitnet_d")


def _ids(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(str(v) for v in value)
    raise ValueError(f"expected a comma-separated list of ids, got {value!r}")


def _optional_float(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"expected a number or empty, got {value!r}")


@frozen
class AppSettings:
    data_root: Path = Path("data")
    artifacts_root: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8081
    threads: int = 0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    build: str = "dev"
    commit: str = "unknown"

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts_root or self.data_root / "artifacts"

    @property
    def executor_threads(self) -> int:
        """`APP__THREADS=0` means auto: one per core, at most 8 (the plan's policy)."""
        return self.threads if self.threads > 0 else min(8, os.cpu_count() or 1)


@frozen
class DigitsSettings:
    model_dir: Path | None = None
    active_model: tuple[str, ...] = field(default=SHIPPED_MODELS, converter=_ids)
    tta_profile: Literal["none", "strong"] = "none"
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    ensemble_temperature_override: float | None = field(default=None, converter=_optional_float)
    # Measured (ops/BENCHMARKS.md, issue 15): below 0.80 flags ~60% of wrong readings and
    # 0.75-1.45% of right ones, on MNIST and on the realistic set alike.
    uncertain_threshold: float = 0.80
    max_image_mb: float = 12.0  # a 12 MP phone JPEG is 3-6 MB; Discord's upload cap is 10 MB
    max_image_side_px: int = 16_384  # 200 MP phone sensors are 16320 px wide
    max_image_pixels: int = 64_000_000  # 48-50 MP shots; below Pillow's bomb warning (89 MP)
    max_image_aspect: float = 20.0  # long/short; phone panoramas reach about 8:1
    predict_timeout_seconds: float = 5.0
    read_queue: int = 64
    inline_read_ms: float = 3.0  # small reads this quick run on the event loop; 0: never
    visualize_max_kb: int = 16
    promotion_tolerance: float = 0.002
    reconcile_interval_s: float = 30.0


def _ids_hook(value: object, _: object) -> tuple[str, ...]:
    return _ids(value)


def _optional_float_hook(value: object, _: object) -> float | None:
    return _optional_float(value)


# The field converters see the raw value: left to the generic hooks, "a,b" would first become
# the tuple of its characters and an empty override would be refused instead of meaning "none".
converter.register_structure_hook(
    DigitsSettings,
    make_dict_structure_fn(
        DigitsSettings,
        converter,
        active_model=override(struct_hook=_ids_hook),
        ensemble_temperature_override=override(struct_hook=_optional_float_hook),
    ),
)


@frozen
class SecuritySettings:
    api_key: str = ""
    # Model uploads only; empty: `api_key`. Lets `digits up` protect uploads with a generated key
    # while reads and training jobs stay open on loopback.
    admin_key: str = ""

    @property
    def upload_key(self) -> str:
        return self.admin_key or self.api_key


@frozen
class EventsSettings:
    enabled: bool = True
    batch_every: int = 10
    maxlen: int = 10_000
    # Open SSE streams per API process; beyond them `GET /v1/train/{id}/events` answers 503
    # `overloaded`. Each costs a little memory and a status check a second, no Redis connection.
    max_streams: int = 1000
    keepalive_s: float = 15.0  # a comment on an idle SSE stream, so proxies keep it open


def _seconds_list(value: object) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        parts = [str(p) for p in value]
    else:
        raise ValueError(f"expected comma-separated seconds, got {value!r}")
    try:
        seconds = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected comma-separated seconds, got {value!r}") from None
    if any(s < 0 for s in seconds):
        raise ValueError(f"expected non-negative seconds, got {value!r}")
    return seconds


@frozen
class StreamsSettings:
    """Redis Streams behaviour; key names themselves are fixed in `streams/keys.py`."""

    result_ttl_s: int = 86_400
    failure_ttl_s: int = 604_800
    retry_max: int = 2
    retry_intervals_s: tuple[float, ...] = field(default=(60.0, 300.0), converter=_seconds_list)
    job_timeout_s: int = 25_200
    claim_min_idle_s: float = 10.0
    heartbeat_interval_s: float = 2.0
    reclaim_interval_s: float = 3.0
    block_ms: int = 2_000
    max_deliveries: int = 5
    # A refusal valve, never a trim: at this many entries in `digits:train`, `POST /v1/train`
    # answers 503 `queue_full` and adds nothing. Workers trim acknowledged entries with MINID,
    # which never drops a pending or unread job; no XADD on `digits:train` carries MAXLEN.
    jobs_maxlen: int = 1_000_000
    shutdown_grace_s: float = 30.0


def _seconds_list_hook(value: object, _: object) -> tuple[float, ...]:
    return _seconds_list(value)


converter.register_structure_hook(
    StreamsSettings,
    make_dict_structure_fn(
        StreamsSettings,
        converter,
        retry_intervals_s=override(struct_hook=_seconds_list_hook),
    ),
)


@frozen
class BotSettings:
    """`digits bot`, the Discord bot; without a token there is no bot (`digits up` starts none)."""

    token: str = ""
    name: str = "digits"  # its Redis keys: `digits:bot:<name>:*` (cursor, tracked messages)
    guild_id: int = 0  # 0: commands registered globally; a server id: there, at once
    edit_interval_s: float = 1.5
    train_per_user: int = 2
    train_window_s: float = 3600.0
    train_model_id: str = "mnist_digitnet_v1"


@frozen
class FeedbackSettings:
    """Corrections (`POST /v1/feedback`) and how `use_feedback` jobs train on them."""

    # Each read's 28x28 sample is kept this long in Redis for a correction; 0: not kept (and
    # corrections are refused as unknown).
    sample_ttl_s: int = 3600
    rate_per_minute: int = 30  # corrections per client (address) per minute
    maxlen: int = 100_000  # `digits:feedback` is trimmed with MAXLEN ~ beyond this
    holdout_fraction: float = 0.2  # of the corrections, held back to measure a new version
    repeat: int = 20  # each training correction appears this many times per epoch


@frozen
class Settings:
    app: AppSettings = AppSettings()
    digits: DigitsSettings = DigitsSettings()
    security: SecuritySettings = SecuritySettings()
    events: EventsSettings = EventsSettings()
    streams: StreamsSettings = StreamsSettings()
    bot: BotSettings = BotSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    redis_url: str | None = None
    handwriting_api_url: str = "http://127.0.0.1:8081"
    handwriting_api_key: str = ""

    @property
    def model_dir(self) -> Path:
        return self.digits.model_dir or self.app.data_root / "models"


_SECTIONS = ("app", "digits", "security", "events", "streams", "bot", "feedback")
_FLAT = ("redis_url", "handwriting_api_url", "handwriting_api_key")


class SettingsError(ValueError):
    """Start-up configuration is invalid; the message names every bad key."""


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, str] | str]:
    tree: dict[str, dict[str, str] | str] = {}
    for key, value in env.items():
        lower = key.lower()
        section, sep, name = lower.partition("__")
        if sep and section in _SECTIONS:
            sub = tree.setdefault(section, {})
            if isinstance(sub, dict):
                sub[name] = value
        elif lower in _FLAT and value:
            tree[lower] = value
    return tree


def _merge(base: dict[str, object], over: Mapping[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = {**current, **value}
        else:
            merged[key] = value
    return merged


def _env_name(path: str) -> str:
    """`$.digits.max_image_mb` -> `DIGITS__MAX_IMAGE_MB`, so errors name what the user sets."""
    parts = path.removeprefix("$.").split(".")
    return "__".join(parts).upper() if len(parts) > 1 else parts[0].upper()


def load_settings(env: Mapping[str, str] | None = None, toml_path: Path | None = None) -> Settings:
    """Build the settings from TOML (if given or named by `HANDWRITING_AI_CONFIG`) and the env."""
    env = os.environ if env is None else env
    data: dict[str, object] = {}
    toml_path = toml_path or (
        Path(env["HANDWRITING_AI_CONFIG"]) if env.get("HANDWRITING_AI_CONFIG") else None
    )
    if toml_path is not None:
        try:
            data = tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {toml_path}: {exc}") from None
    data = _merge(data, _from_env(env))
    try:
        settings = structure(data, Settings)
    except ContractError as exc:
        named = [_rename(err) for err in exc.errors]
        raise SettingsError("invalid settings: " + "; ".join(named)) from None
    problems = cross_checks(settings)
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    return settings


CLAIM_TO_HEARTBEAT_MIN = 3.0


def cross_checks(settings: Settings) -> list[str]:
    """Rules between settings. A claim idle time near the heartbeat interval would let a worker
    take a live job whose owner merely missed a heartbeat (a slow round trip, a Redis blip)."""
    streams = settings.streams
    problems: list[str] = []
    if streams.heartbeat_interval_s <= 0:
        problems.append("STREAMS__HEARTBEAT_INTERVAL_S: must be above 0")
    elif streams.claim_min_idle_s < CLAIM_TO_HEARTBEAT_MIN * streams.heartbeat_interval_s - 1e-9:
        problems.append(
            f"STREAMS__CLAIM_MIN_IDLE_S: must be at least {CLAIM_TO_HEARTBEAT_MIN:g} x"
            f" STREAMS__HEARTBEAT_INTERVAL_S ({streams.heartbeat_interval_s:g} s), so that a live"
            f" worker keeps its job; got {streams.claim_min_idle_s:g}"
        )
    problems += _bot_checks(settings.bot)
    problems += _feedback_checks(settings.feedback)
    return problems


def _feedback_checks(feedback: FeedbackSettings) -> list[str]:
    problems: list[str] = []
    if feedback.sample_ttl_s < 0:
        problems.append("FEEDBACK__SAMPLE_TTL_S: must be 0 (samples not kept) or more")
    if feedback.rate_per_minute < 0:
        problems.append("FEEDBACK__RATE_PER_MINUTE: must be 0 (no limit) or more")
    if feedback.maxlen < 1:
        problems.append("FEEDBACK__MAXLEN: must be 1 or more")
    if not 0 <= feedback.holdout_fraction < 1:
        problems.append("FEEDBACK__HOLDOUT_FRACTION: must be at least 0 and below 1")
    if feedback.repeat < 1:
        problems.append("FEEDBACK__REPEAT: must be 1 or more")
    return problems


_BOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _bot_checks(bot: BotSettings) -> list[str]:
    problems: list[str] = []
    if bot.edit_interval_s <= 0:
        problems.append("BOT__EDIT_INTERVAL_S: must be above 0")
    if bot.train_per_user < 0:
        problems.append("BOT__TRAIN_PER_USER: must be 0 (no limit) or more")
    if bot.train_window_s <= 0:
        problems.append("BOT__TRAIN_WINDOW_S: must be above 0")
    if bot.guild_id < 0:
        problems.append("BOT__GUILD_ID: must be a server id, or 0 for none")
    if not _BOT_NAME.match(bot.name):
        problems.append(f"BOT__NAME: 1 to 64 letters, digits, '_' '.' '-', got {bot.name!r}")
    return problems


_EXTRA = re.compile(r"^extra fields found \((?P<names>.*)\)$")


def _rename(error: str) -> str:
    """`reason @ $.digits.x` -> `DIGITS__X: reason`; an unknown key is named as it was set."""
    reason, _, path = error.rpartition(" @ ")
    if not reason:
        return error
    extra = _EXTRA.match(reason)
    if extra is None:
        return f"{_env_name(path)}: {reason}"
    section = path.removeprefix("$").removeprefix(".")
    names = [
        "__".join([*section.split("."), key]).upper() if section else key.upper()
        for key in extra.group("names").split(", ")
    ]
    return f"{', '.join(names)}: unknown setting"
