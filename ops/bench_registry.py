"""How fast API replicas on separate model directories converge through the Redis registry.

One embedded redis-server and two `digits serve` processes, each with its own
`DIGITS__MODEL_DIR` (no shared volume) and `DIGITS__RECONCILE_INTERVAL_S=600`, so that only
events move them. Each figure is from the moment the change is made (the upload answered and
the worker's `completed` event published, or the admin call answered) to the moment the *other*
replica's `/v1/models/active` shows it:

- a new digitnet version (~0.3 MB) uploaded to A and promoted by the gate: B serves it;
- a rollback through B: A serves the older version again;
- a resnet18 (44.7 MB) uploaded to A, then `serve`d through A: B fetched and serves it;
- a third replica started on an empty directory: seconds from spawn to `/readyz` 200, serving
  both models (fetched from Redis before serving).

    ./dev run python ops/bench_registry.py --repeat 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import torch
from redis import Redis
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.events import TrainCompleted, encode_event, now_iso
from handwriting_ai.models import create_model
from handwriting_ai.supervisor.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "mnist_digitnet_a" / "20261208T024923.630041Z-1e080e"
KEY = "bench-registry-key"
MODEL, BIG = "bench_a", "bench_big"


@contextmanager
def replica(name: str, root: Path, redis_url: str) -> Iterator[tuple[str, float]]:
    """`digits serve` on its own model directory; (its URL, seconds to /readyz 200)."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DIGITS__MODEL_DIR": str(root / name),
        "DIGITS__ACTIVE_MODEL": MODEL,
        "DIGITS__RECONCILE_INTERVAL_S": "600",
        "SECURITY__ADMIN_KEY": KEY,
        "APP__LOG_LEVEL": "warning",
    }
    log = (root / f"{name}.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "handwriting_ai.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _ready(url), f"{name} to be ready", 120)
        yield url, time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def served(url: str) -> dict[str, str]:
    body = httpx.get(f"{url}/v1/models/active", timeout=5).json()
    return {m["model_id"]: m["version"] for m in body["members"]}


def artifact(model_id: str, version: str, arch: str, val_acc: float) -> dict[str, bytes]:
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    manifest.update(model_id=model_id, version=version, arch=arch, val_acc=val_acc)
    manifest.update(run_id=version, training_recipe={**manifest["training_recipe"], "arch": arch})
    if arch == "digitnet":
        weights = (SHIPPED / "model.pt").read_bytes()
    else:
        buffer = io.BytesIO()
        torch.save(create_model(arch).state_dict(), buffer)
        weights = buffer.getvalue()
    metrics = json.dumps({"val_acc": val_acc}).encode()
    return {"model": weights, "manifest": json.dumps(manifest).encode(), "metrics": metrics}


def upload(url: str, model_id: str, parts: dict[str, bytes]) -> None:
    files = {name: (name, data, "application/octet-stream") for name, data in parts.items()}
    response = httpx.post(
        f"{url}/v1/admin/models/upload",
        files=files,
        data={"model_id": model_id},
        headers={"X-Api-Key": KEY},
        timeout=120,
    )
    response.raise_for_status()


def admin(url: str, path: str) -> None:
    response = httpx.post(f"{url}/v1/admin/models/{path}", headers={"X-Api-Key": KEY}, timeout=30)
    response.raise_for_status()


def completed(redis: Redis, model_id: str, version: str, val_acc: float) -> None:
    event = TrainCompleted(
        request_id=f"bench-{version}",
        user_id=0,
        model_id=model_id,
        ts=now_iso(),
        val_acc=val_acc,
        version=version,
    )
    fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_event(event).items()}
    redis.xadd("digits:events", fields)


def timed(change: Callable[[], None], done: Callable[[], bool], what: str) -> float:
    started = time.perf_counter()
    change()
    wait(done, what)
    return time.perf_counter() - started


def one_round(root: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    with ExitStack() as stack:
        server = EmbeddedRedis(root / "redis", port=free_port())
        server.start()
        stack.callback(server.stop)
        redis = stack.enter_context(Redis.from_url(server.url))
        first = artifact(MODEL, "20260101T000000Z", "digitnet", 0.99)
        (root / "a" / MODEL / "20260101T000000Z").mkdir(parents=True)
        for name, data in first.items():
            (root / "a" / MODEL / "20260101T000000Z" / f"{name}.{_ext(name)}").write_bytes(data)
        a, _ = stack.enter_context(replica("a", root, server.url))
        b, _ = stack.enter_context(replica("b", root, server.url))
        v2 = "20260102T000000Z"

        def new_version() -> None:
            upload(a, MODEL, artifact(MODEL, v2, "digitnet", 0.995))
            completed(redis, MODEL, v2, 0.995)

        figures["new version, A -> B (s)"] = timed(
            new_version, lambda: served(b) == {MODEL: v2}, "B to serve v2"
        )
        figures["rollback via B -> A (s)"] = timed(
            lambda: admin(b, f"{MODEL}/rollback"),
            lambda: served(a) == {MODEL: "20260101T000000Z"},
            "A to follow the rollback",
        )
        big = artifact(BIG, "20260101T000000Z", "resnet18", 0.99)

        def big_model() -> None:
            upload(a, BIG, big)
            admin(a, f"{BIG}/serve")

        figures["44.7 MB resnet18 served via A -> B (s)"] = timed(
            big_model, lambda: BIG in served(b), "B to serve the resnet18"
        )
        _, ready_s = stack.enter_context(replica("c", root, server.url))
        figures["late replica, empty dir, spawn -> ready (s)"] = ready_s
    return figures


def _ext(part: str) -> str:
    return "pt" if part == "model" else "json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
            rounds.append(one_round(Path(tmp)))
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        shown = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name:<45} median {statistics.median(values):.3f}  ({shown})")


if __name__ == "__main__":
    main()
