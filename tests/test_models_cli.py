"""`digits models …` as an operator runs it: a subprocess that finds the API by
`HANDWRITING_API_URL` and sends `HANDWRITING_API_KEY`, against the real app and a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream_helpers
from handwriting_ai.api.app import create_app
from helpers import make_settings, write_artifact
from worker_support import base_env, serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

KEY = "models-cli-key"
MODEL, OTHER = "tiny_a", "tiny_b"
V1, V2 = "20250101T000000Z", "20250102T000000Z"


@pytest.fixture
def api_url(tmp_path: Path, redis_url: str) -> Iterator[str]:
    model_dir = tmp_path / "models"
    write_artifact(model_dir, MODEL, seed=1, prefer=3, version=V1)
    write_artifact(model_dir, MODEL, seed=2, prefer=8, version=V2)
    write_artifact(model_dir, OTHER, seed=3, prefer=5, version=V1)
    settings = make_settings(
        model_dir,
        [MODEL],
        {"REDIS_URL": redis_url, "SECURITY__ADMIN_KEY": KEY, "DIGITS__RECONCILE_INTERVAL_S": "600"},
    )
    with serve_app(create_app(settings)) as url:
        yield url


def digits_models(*args: str, url: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    env = base_env(HANDWRITING_API_URL=url, HANDWRITING_API_KEY=key, APP__LOG_LEVEL="warning")
    return subprocess.run(
        [sys.executable, "-m", "handwriting_ai.cli", "models", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_serve_promote_rollback_pin_through_the_cli(api_url: str) -> None:
    listed = digits_models("list", url=api_url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"served: {MODEL}  (registry: redis)"
    # write_artifact left CURRENT on v2 (the last written): the registry took it as current.
    assert f"{MODEL}  served  current {V2}" in listed.stdout
    assert f"{OTHER}  not served  current {V1}" in listed.stdout

    served = digits_models("serve", OTHER, url=api_url)
    assert served.returncode == 0, served.stderr
    assert served.stdout.splitlines() == [
        f"served {OTHER}",
        f"served: {MODEL}, {OTHER}; {OTHER} current {V1}",
    ]
    again = digits_models("serve", OTHER, url=api_url)
    assert "(already so: nothing changed)" in again.stdout

    promoted = digits_models("--json", "promote", MODEL, V1, url=api_url)
    body = json.loads(promoted.stdout)
    assert (body["action"], body["current"], body["previous"]) == ("promoted", V1, V2)
    rolled = digits_models("rollback", MODEL, url=api_url)
    assert f"{MODEL} current {V2}" in rolled.stdout
    pinned = digits_models("--json", "pin", MODEL, url=api_url)
    assert json.loads(pinned.stdout)["pinned"] == V2

    as_json = json.loads(digits_models("--json", "list", url=api_url).stdout)
    assert as_json["served"] == [MODEL, OTHER]
    entry = next(m for m in as_json["models"] if m["model_id"] == MODEL)
    assert (entry["current"], entry["pinned"]) == (V2, V2)


def test_refusals_exit_1_with_the_services_message(api_url: str) -> None:
    missing = digits_models("promote", MODEL, "20990101T000000Z", url=api_url)
    assert missing.returncode == 1
    assert "not_found (404)" in missing.stderr
    assert "no stored version '20990101T000000Z'" in missing.stderr
    wrong_key = digits_models("serve", OTHER, url=api_url, key="nope")
    assert wrong_key.returncode == 1
    assert "unauthorized (401)" in wrong_key.stderr
    only = digits_models("unserve", MODEL, url=api_url)
    assert only.returncode == 1
    assert "conflict (409)" in only.stderr


def test_beside_digits_up_the_generated_upload_key_is_used(api_url: str, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "admin_key").write_text(KEY + "\n")  # as `digits up` leaves it
    env = base_env(HANDWRITING_API_URL=api_url, APP__DATA_ROOT=str(data_root))
    done = subprocess.run(
        [sys.executable, "-m", "handwriting_ai.cli", "models", "serve", OTHER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"served {OTHER}")
