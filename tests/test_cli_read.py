"""`digits read FILE…` as a user runs it: a subprocess that finds the API by
`HANDWRITING_API_URL`, sends `HANDWRITING_API_KEY`, and prints the bot's line per file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handwriting_ai.api.app import create_app
from handwriting_ai.settings import SHIPPED_MODELS
from helpers import make_settings, png_bytes, seven
from worker_support import base_env, serve_app

REPO = Path(__file__).resolve().parents[1]
API_KEY = "cli-read-key"
SAMPLE = REPO / "ops" / "samples" / "digit.jpg"  # a 7, photographed
LINE = r"Digit: 7 \(\d+\.\d% confidence\)\. Top-3: 7=\d\.\d{3}, \d=\d\.\d{3}, \d=\d\.\d{3}\."


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped ensemble behind the real app, with an API key."""
    model_dir = tmp_path_factory.mktemp("models")
    for model_id in SHIPPED_MODELS:
        shutil.copytree(REPO / "models" / model_id, model_dir / model_id)
    settings = make_settings(model_dir, SHIPPED_MODELS, {"SECURITY__API_KEY": API_KEY})
    with serve_app(create_app(settings)) as url:
        yield url


def digits_read(*args: str, url: str, key: str = API_KEY) -> subprocess.CompletedProcess[str]:
    env = base_env(HANDWRITING_API_URL=url, HANDWRITING_API_KEY=key, APP__LOG_LEVEL="warning")
    return subprocess.run(
        [sys.executable, "-m", "handwriting_ai.cli", "read", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_file_read_prints_the_bots_line_and_exits_0(api_url: str, tmp_path: Path) -> None:
    drawn = tmp_path / "seven.png"
    drawn.write_bytes(png_bytes(seven()))
    done = digits_read(str(SAMPLE), str(drawn), url=api_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for path, line in zip((SAMPLE, drawn), lines, strict=True):
        prefix = f"{path}: "
        assert line.startswith(prefix)
        assert line.removeprefix(prefix).startswith("Digit: ")
        assert line.endswith("Model: ensemble_3_models.") or "Low confidence" in line
    assert re.match(LINE, lines[0].removeprefix(f"{SAMPLE}: ")), lines[0]


def test_a_failed_file_gets_the_error_line_and_exit_1(api_url: str, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("not an image")
    missing = tmp_path / "missing.png"
    done = digits_read(str(note), str(SAMPLE), str(missing), url=api_url)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith(f"{SAMPLE}: Digit: 7 ")
    errors = done.stderr.splitlines()
    assert f"{note}: I can only read PNG or JPEG images." in errors
    assert f"{missing}: cannot read the file (No such file or directory)" in errors


def test_a_wrong_key_and_an_absent_api_are_failures(api_url: str) -> None:
    refused = digits_read(str(SAMPLE), url=api_url, key="wrong")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"{SAMPLE}: The digit service refused the bot's API key; the bot's configuration"
        " needs fixing."
    ]
    # Port 1: nothing listens; one retry a second later, then the friendly line.
    absent = digits_read(str(SAMPLE), url="http://127.0.0.1:1")
    assert absent.returncode == 1
    assert (
        f"{SAMPLE}: The digit service can't be reached right now. Please try again later."
        in absent.stderr.splitlines()
    )


def test_usage_errors_exit_2(api_url: str) -> None:
    no_files = digits_read(url=api_url)
    assert no_files.returncode == 2
    assert "FILE" in no_files.stderr
    bad_settings = subprocess.run(
        [sys.executable, "-m", "handwriting_ai.cli", "read", str(SAMPLE)],
        env=base_env(HANDWRITING_API_URL=api_url, APP__PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_settings.returncode == 2
    assert "APP__PORT" in bad_settings.stderr
