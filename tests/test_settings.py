"""Settings from the environment and TOML: nested keys, precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from attrs.exceptions import FrozenInstanceError

from handwriting_ai.settings import Settings, SettingsError, load_settings


def test_defaults_without_env() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.app.port == 8081
    assert settings.digits.active_model == (
        "mnist_digitnet_a",
        "mnist_digitnet_c",
        "mnist_digitnet_d",
    )
    assert settings.model_dir == Path("data") / "models"
    assert settings.app.artifacts_dir == Path("data") / "artifacts"


def test_nested_env_keys() -> None:
    settings = load_settings(
        {
            "APP__DATA_ROOT": "/srv/data",
            "APP__PORT": "9000",
            "APP__THREADS": "3",
            "DIGITS__MODEL_DIR": "/models",
            "DIGITS__TTA_PROFILE": "strong",
            "DIGITS__MAX_IMAGE_MB": "1.5",
            "DIGITS__PREDICT_TIMEOUT_SECONDS": "2",
            "SECURITY__API_KEY": "k",
            "EVENTS__BATCH_EVERY": "25",
            "REDIS_URL": "redis://localhost:6379/0",
            "PATH": "/usr/bin",  # unrelated variables are ignored
        }
    )
    assert settings.app.data_root == Path("/srv/data")
    assert settings.app.port == 9000
    assert settings.app.executor_threads == 3
    assert settings.model_dir == Path("/models")
    assert settings.digits.tta_profile == "strong"
    assert settings.digits.max_image_mb == 1.5
    assert settings.digits.predict_timeout_seconds == 2.0
    assert settings.security.api_key == "k"
    assert settings.events.batch_every == 25
    assert settings.redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b", ("a", "b")),
        ("a, b ,c", ("a", "b", "c")),
        ("tiny_seven", ("tiny_seven",)),
        ("a,,b,", ("a", "b")),
    ],
)
def test_active_model_list(raw: str, expected: tuple[str, ...]) -> None:
    assert load_settings({"DIGITS__ACTIVE_MODEL": raw}).digits.active_model == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("off", False)],
)
def test_bool_parsing(raw: str, expected: bool) -> None:
    assert load_settings({"EVENTS__ENABLED": raw}).events.enabled is expected


def test_temperature_override_empty_means_none() -> None:
    assert load_settings({}).digits.ensemble_temperature_override is None
    empty = load_settings({"DIGITS__ENSEMBLE_TEMPERATURE_OVERRIDE": ""})
    assert empty.digits.ensemble_temperature_override is None
    set_ = load_settings({"DIGITS__ENSEMBLE_TEMPERATURE_OVERRIDE": "1.5"})
    assert set_.digits.ensemble_temperature_override == 1.5


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        'redis_url = "redis://r:6379/1"\n'
        '[app]\nport = 9100\nlog_format = "console"\n'
        '[digits]\nactive_model = ["a", "b"]\nmax_image_mb = 3\n'
    )
    settings = load_settings({}, path)
    assert settings.redis_url == "redis://r:6379/1"
    assert settings.app.port == 9100
    assert settings.app.log_format == "console"
    assert settings.digits.active_model == ("a", "b")
    assert settings.digits.max_image_mb == 3.0


def test_env_overrides_toml_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[app]\nport = 9100\nthreads = 4\n")
    settings = load_settings({"APP__PORT": "9200"}, path)
    assert settings.app.port == 9200  # the env wins
    assert settings.app.threads == 4  # the rest of the section stays


def test_config_path_from_env(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[digits]\ntta_profile = 'strong'\n")
    settings = load_settings({"HANDWRITING_AI_CONFIG": str(path)})
    assert settings.digits.tta_profile == "strong"


def test_unknown_key_is_named() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DIGITS__NOPE": "1"})
    assert str(caught.value) == "invalid settings: DIGITS__NOPE: unknown setting"


def test_unknown_toml_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text("[digits]\nmax_image_mbs = 3\n")
    with pytest.raises(SettingsError, match="DIGITS__MAX_IMAGE_MBS: unknown setting"):
        load_settings({}, path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("APP__PORT", "abc"),
        ("APP__PORT", "1.5"),
        ("DIGITS__MAX_IMAGE_MB", "big"),
        ("DIGITS__MAX_IMAGE_MB", "nan"),
        ("EVENTS__ENABLED", "maybe"),
        ("DIGITS__TTA_PROFILE", "weak"),
        ("DIGITS__ENSEMBLE_TEMPERATURE_OVERRIDE", "hot"),
        ("APP__LOG_LEVEL", "verbose"),
    ],
)
def test_malformed_value_is_named(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({key: value})
    assert f"{key}: " in str(caught.value)


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"APP__PORT": "abc", "DIGITS__NOPE": "1"})
    assert "APP__PORT" in str(caught.value)
    assert "DIGITS__NOPE" in str(caught.value)


def test_unreadable_toml_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[app\nport = ")
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings({}, path)
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings({}, tmp_path / "missing.toml")


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    name = "port"
    with pytest.raises(FrozenInstanceError):
        setattr(settings.app, name, 1)


@pytest.mark.parametrize(
    ("heartbeat", "claim", "ok"),
    [
        ("2", "6", True),
        ("2", "5.9", False),
        ("1", "3", True),
        ("1", "2.5", False),
        ("0", "10", False),
    ],
)
def test_claim_idle_must_be_three_heartbeats(heartbeat: str, claim: str, ok: bool) -> None:
    """A claim idle time near the heartbeat lets a worker take a live job: refused, by name."""
    env = {"STREAMS__HEARTBEAT_INTERVAL_S": heartbeat, "STREAMS__CLAIM_MIN_IDLE_S": claim}
    if ok:
        assert load_settings(env).streams.claim_min_idle_s == float(claim)
        return
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert "STREAMS__" in str(caught.value)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (8, 8), (64, 8), (None, 1)])
def test_auto_threads_are_one_per_core_at_most_eight(
    monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert load_settings({"APP__THREADS": "0"}).app.executor_threads == expected
    assert load_settings({"APP__THREADS": "5"}).app.executor_threads == 5
