"""The whole loop, as an operator drives it: a job added with `redis-cli XADD`-shaped fields is
trained by a worker, uploaded to the API, and the API's reload consumer serves the new version."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from handwriting_ai.api.app import create_app
from handwriting_ai.contracts.events import TrainCompleted
from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.worker import serve_worker
from helpers import make_settings, png_bytes, seven, write_artifact
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    TINY_MODEL_ID,
    LiveApi,
    events,
    status,
    wait_until,
    worker_env,
    worker_settings,
)

pytestmark = pytest.mark.slow
SCHEMAS = Path(__file__).resolve().parents[1] / "streams" / "schemas"


@contextmanager
def api_with_reload(model_dir: Path, redis_url: str) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = make_settings(
        model_dir,
        [TINY_MODEL_ID],
        {"SECURITY__API_KEY": API_KEY, "REDIS_URL": redis_url, "DIGITS__PROMOTION_TOLERANCE": "1"},
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30, what="the API to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def served_version(url: str) -> str:
    body = httpx.get(f"{url}/v1/models/active", headers={"X-Api-Key": API_KEY}).json()
    (member,) = body["members"]
    return str(member["version"])


async def test_xadd_job_runs_to_completed_and_the_api_serves_the_new_version(
    tmp_path: Path,
) -> None:
    data_root = write_tiny_mnist(tmp_path / "data")
    model_dir = tmp_path / "api-models"
    write_artifact(model_dir, TINY_MODEL_ID, seed=1, prefer=3, version="20250101T000000Z")
    with running_redis(tmp_path) as server, api_with_reload(model_dir, server.url) as url:
        assert served_version(url) == "20250101T000000Z"
        client = redis.Redis.from_url(server.url)
        client.xadd(
            JOBS_STREAM,
            {"model_id": TINY_MODEL_ID, "epochs": "1", "batch_size": "32", "request_id": "e2e"},
        )
        env = worker_env(server.url, data_root, tmp_path, LiveApi(url, model_dir))
        await serve_worker(worker_settings(env), burst=True, install_signals=False)

        assert status(client, "e2e")["status"] == "completed"
        (done,) = [e for e in events(client, "e2e") if isinstance(e, TrainCompleted)]
        assert done.version is not None
        # The API runs in its own thread: a blocking probe from here cannot stall it.
        wait_until(lambda: served_version(url) == done.version, timeout_s=20, what="the reload")
        async with httpx.AsyncClient(base_url=url, headers={"X-Api-Key": API_KEY}) as http:
            read = await http.post(
                "/v1/read", files={"file": ("d.png", png_bytes(seven()), "image/png")}
            )
        assert read.status_code == 200
        assert read.json()["model_id"] == TINY_MODEL_ID
        manifest = json.loads(
            (model_dir / TINY_MODEL_ID / done.version / "manifest.json").read_text()
        )
        assert manifest["run_id"] == done.run_id
