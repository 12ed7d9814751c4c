"""Latency and throughput of `POST /v1/read` over real HTTP (uvicorn on loopback).

Starts `digits serve` once per TTA profile (or measures `--url`), then:
one keep-alive client sending requests back to back (p50/p95/p99), and 8 and 32 concurrent
clients (requests/s, p50/p95). Images come from a labelled folder (`labels.csv`) such as the
realistic-upload set, or are MNIST test digits as PNG when no folder is given.

    python ops/bench_read.py [--set /tmp/realistic] [--requests 400] [--profiles none,strong]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from handwriting_ai.data.mnist import load_mnist

Upload = tuple[str, bytes, str]


def load_uploads(folder: Path | None, data_root: Path, count: int) -> list[Upload]:
    if folder is None:
        images, _ = load_mnist(data_root, "test")
        out = []
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(images[i], mode="L").save(buf, format="PNG")
            out.append((f"{i}.png", buf.getvalue(), "image/png"))
        return out
    rows = list(csv.DictReader((folder / "labels.csv").open()))[:count]
    return [
        (
            Path(r["path"]).name,
            (folder / r["path"]).read_bytes(),
            "image/png" if r["path"].endswith(".png") else "image/jpeg",
        )
        for r in rows
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(profile: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIGITS__TTA_PROFILE": profile, "APP__LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "handwriting_ai.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready within 120 s")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(url: str, uploads: list[Upload], n: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n + 20):
            up = uploads[i % len(uploads)]
            started = time.perf_counter()
            resp = client.post("/v1/read", files={"file": up})
            elapsed = (time.perf_counter() - started) * 1000
            if resp.status_code not in (200, 400):
                raise SystemExit(f"unexpected {resp.status_code}: {resp.text}")
            if i >= 20:  # warm-up
                latencies.append(elapsed)
    return latencies


async def concurrent(
    url: str, uploads: list[Upload], clients: int, n: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(n))

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for i in counter:
                up = uploads[i % len(uploads)]
                started = time.perf_counter()
                resp = await client.post("/v1/read", files={"file": up})
                latencies.append((time.perf_counter() - started) * 1000)
                if resp.status_code not in (200, 400):
                    raise SystemExit(f"unexpected {resp.status_code}: {resp.text}")

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return n / (time.perf_counter() - started), latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", type=Path, default=None, help="labelled image folder")
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--profiles", default="none,strong")
    parser.add_argument("--url", default=None, help="measure a running server (one profile)")
    args = parser.parse_args()
    uploads = load_uploads(args.set, args.data_root, 200)
    size_kb = statistics.mean(len(u[1]) for u in uploads) / 1024
    print(
        f"{len(uploads)} distinct uploads, mean {size_kb:.1f} KB; {args.requests} requests per run"
    )
    print(
        "| TTA | 1 client p50 / p95 / p99 ms "
        "| 8 clients req/s (p50 / p95 ms) | 32 clients req/s (p50 / p95 ms) |"
    )
    print("|---|---|---|---|")
    for profile in args.profiles.split(","):
        proc = None
        url = args.url
        if url is None:
            port = free_port()
            proc = start_server(profile, port)
            url = f"http://127.0.0.1:{port}"
        try:
            seq = sequential(url, uploads, args.requests)
            cells = [f"{pct(seq, 0.5):.2f} / {pct(seq, 0.95):.2f} / {pct(seq, 0.99):.2f}"]
            for clients in (8, 32):
                rps, lat = asyncio.run(concurrent(url, uploads, clients, args.requests))
                cells.append(f"{rps:.0f} ({pct(lat, 0.5):.1f} / {pct(lat, 0.95):.1f})")
            print(f"| {profile} | " + " | ".join(cells) + " |", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
