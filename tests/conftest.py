"""Shared fixtures: a model directory in tmp_path and a way to serve settings over real HTTP.

The developer's settings (`STREAMS__*`, `APP__*`, `REDIS_URL`, ...) are taken out of this
process's environment before anything is collected: in-process code that reads `os.environ`
(`load_settings()` with no env, the `digits` commands) sees none of them. Subprocesses start
from `worker_support.base_env()`, which never passes them; `hostile_environ` proves it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from litestar.testing import TestClient

from handwriting_ai.api.app import create_app
from handwriting_ai.settings import Settings
from helpers import Artifact, Client, make_settings, write_artifact

Serve = Callable[[Settings], Client]

DEVELOPER_SETTINGS = ("STREAMS__", "DIGITS__", "APP__", "EVENTS__", "SECURITY__", "HANDWRITING_")
# Values that would change a test that let them through: an invalid claim idle time (a worker
# reading it exits at start), one delivery only, an unknown model, a Redis and an API nowhere.
HOSTILE_ENVIRON = {
    "STREAMS__CLAIM_MIN_IDLE_S": "0.5",
    "STREAMS__MAX_DELIVERIES": "1",
    "STREAMS__SHUTDOWN_GRACE_S": "0",
    "DIGITS__ACTIVE_MODEL": "nope",
    "DIGITS__MODEL_DIR": "/nonexistent/models",
    "APP__DATA_ROOT": "/nonexistent/data",
    "APP__PORT": "1",
    "EVENTS__BATCH_EVERY": "nope",
    "SECURITY__API_KEY": "developer-key",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "HANDWRITING_API_URL": "http://127.0.0.1:1",
    "HANDWRITING_API_KEY": "developer-key",
    "HANDWRITING_AI_CONFIG": "/nonexistent/settings.toml",
}


def is_developer_setting(name: str) -> bool:
    return name == "REDIS_URL" or name.startswith(DEVELOPER_SETTINGS)


def pytest_configure(config: pytest.Config) -> None:
    for name in [n for n in os.environ if is_developer_setting(n)]:
        del os.environ[name]


@pytest.fixture
def hostile_environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A developer's shell full of settings, in this process's environment for one test: the
    subprocesses the test starts must behave as if it were empty."""
    for name, value in HOSTILE_ENVIRON.items():
        monkeypatch.setenv(name, value)
    return HOSTILE_ENVIRON


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an app (lifespan included) for the given settings; stopped when the test ends."""
    with ExitStack() as stack:

        def start(settings: Settings) -> Client:
            return stack.enter_context(TestClient(create_app(settings)))

        yield start


@pytest.fixture
def seven_model(model_dir: Path) -> Artifact:
    """One tiny model that answers 7 whatever it sees."""
    return write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)


@pytest.fixture
def client(serve: Serve, model_dir: Path, seven_model: Artifact) -> Client:
    return serve(make_settings(model_dir, [seven_model.model_id]))
