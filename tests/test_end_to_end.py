"""The whole loop, as an operator drives it: a job added with `redis-cli XADD`-shaped fields is
trained by a worker, uploaded to the API, and the API's reload consumer serves the new version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch
from torch import nn

from handwriting_ai.api.app import create_app
from handwriting_ai.contracts.events import TrainCompleted
from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.training.config import TrainConfig
from handwriting_ai.training.dataset import preprocessed_mnist, split_train_val
from handwriting_ai.training.loop import accuracy, predict_logits
from handwriting_ai.worker import serve_worker
from helpers import make_settings, png_bytes, seven, state_of, tiny_module, write_artifact
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    TINY_MODEL_ID,
    LiveApi,
    events,
    serve_app,
    status,
    wait_until,
    worker_env,
    worker_settings,
)

pytestmark = pytest.mark.slow
SCHEMAS = Path(__file__).resolve().parents[1] / "streams" / "schemas"


@contextmanager
def api_with_reload(model_dir: Path, redis_url: str) -> Iterator[str]:
    """The API as deployed: uploads keyed, reloads on events, the default promotion gate."""
    settings = make_settings(
        model_dir, [TINY_MODEL_ID], {"SECURITY__API_KEY": API_KEY, "REDIS_URL": redis_url}
    )
    with serve_app(create_app(settings)) as url:
        yield url


def val_acc_of(module: nn.Module, data_root: Path) -> float:
    """Accuracy on the validation split every training run holds out (what the gate compares)."""
    pixels, labels = preprocessed_mnist(data_root, "train")
    _, val = split_train_val(len(labels), TrainConfig(model_id=TINY_MODEL_ID).val_size)
    y = torch.from_numpy(labels[val].astype(np.int64))
    return accuracy(predict_logits(module, torch.from_numpy(pixels[val])), y)


def served_version(url: str) -> str:
    body = httpx.get(f"{url}/v1/models/active", headers={"X-Api-Key": API_KEY}).json()
    (member,) = body["members"]
    return str(member["version"])


async def test_xadd_job_runs_to_completed_and_the_api_serves_the_new_version(
    tmp_path: Path,
) -> None:
    # 960 training images, 2 epochs: enough to learn them (see test_learning.py).
    data_root = write_tiny_mnist(tmp_path / "data", train=1200, test=200)
    model_dir = tmp_path / "api-models"
    # The version served first is untrained; its manifest records the accuracy it really has,
    # so the trained version is promoted by the default gate on its merit.
    # (Measured on a copy of the data: the worker still preprocesses its data root itself.)
    untrained = tiny_module(seed=1, prefer=3)
    before = val_acc_of(untrained, write_tiny_mnist(tmp_path / "copy", train=1200, test=200))
    assert before < 0.3

    def measured(data: dict[str, object]) -> None:
        data["val_acc"] = round(before, 6)

    write_artifact(
        model_dir,
        TINY_MODEL_ID,
        state=state_of(untrained),
        version="20250101T000000Z",
        edit=measured,
    )
    with running_redis(tmp_path) as server, api_with_reload(model_dir, server.url) as url:
        assert served_version(url) == "20250101T000000Z"
        client = redis.Redis.from_url(server.url)
        client.xadd(
            JOBS_STREAM,
            {"model_id": TINY_MODEL_ID, "epochs": "2", "batch_size": "32", "request_id": "e2e"},
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
        assert manifest["val_acc"] > before + 0.4, (manifest["val_acc"], before)
