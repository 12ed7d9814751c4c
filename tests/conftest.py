"""Shared fixtures: a model directory in tmp_path and a way to serve settings over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from litestar.testing import TestClient

from handwriting_ai.api.app import create_app
from handwriting_ai.settings import Settings
from helpers import Artifact, Client, make_settings, write_artifact

Serve = Callable[[Settings], Client]


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
