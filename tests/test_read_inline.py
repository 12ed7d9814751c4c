"""Small quick reads run on the event loop; big images, slow models and a long queue do not.

Handing a ~1.5 ms read to a read thread and back cost more than the read itself, so once small
reads (images up to 1024 x 1024 px) with the served ensemble are measured quick, the event loop
runs them itself (`api/admission.py`, `ReadAdmission.inline_ok`). These tests watch where each
read's forward pass really ran: the spy models are test-only architectures (torch backend, so
the Python `forward` is what runs), loaded from disk like any other model.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from handwriting_ai.api.admission import INLINE_MAX_PIXELS, ReadAdmission
from handwriting_ai.api.app import create_app
from handwriting_ai.api.edge import EdgeProtocol
from handwriting_ai.models import registry
from helpers import make_settings, png_bytes, seven, state_of, write_artifact
from worker_support import serve_app

SPY_ARCH = "test_thread_spy_net"


class Where:
    """The thread of each forward pass, shared by every copy of the model (the engine
    deep-copies a module to fuse it)."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.burn_s = 0.0  # CPU to burn per forward pass: a slow model

    def __deepcopy__(self, memo: dict[int, object]) -> Where:
        return self


class SpyNet(nn.Module):
    def __init__(self, where: Where) -> None:
        super().__init__()
        self.where = where
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.where.threads.append(threading.current_thread().name)
        end = time.thread_time() + self.where.burn_s
        while time.thread_time() < end:  # CPU, not a sleep: what a slow model costs
            pass
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


@pytest.fixture
def where(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Where:
    shared = Where()
    monkeypatch.setitem(registry._REGISTRY, SPY_ARCH, lambda: SpyNet(shared))
    torch.manual_seed(3)
    write_artifact(model_dir, "spy", arch=SPY_ARCH, state=state_of(SpyNet(Where())))
    return shared


@contextmanager
def api(model_dir: Path, http: type[EdgeProtocol] = EdgeProtocol, **extra: str) -> Iterator[str]:
    settings = {"DIGITS__BACKEND": "torch", **extra}
    with serve_app(create_app(make_settings(model_dir, ["spy"], settings)), http=http) as url:
        yield url


def read(client: httpx.Client, url: str, image: bytes) -> None:
    response = client.post(f"{url}/v1/read", files={"file": ("d.png", image, "image/png")})
    assert response.status_code == 200, response.text


def runs(client: httpx.Client, url: str) -> dict[str, float]:
    text = client.get(f"{url}/metrics").text
    return {
        sample.labels["where"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "digits_read_runs_total"
    }


def on_read_thread(name: str) -> bool:
    return name.startswith("read")


# Where small reads run, not how fast this machine is: a budget no spy read reaches, even cold
# and under the full suite (at the default 3 ms, CI's first reads took five to measure quick).
GENEROUS_MS = "50"


def test_small_reads_run_on_the_event_loop_once_measured_quick(
    model_dir: Path, where: Where
) -> None:
    image = png_bytes(seven())
    with (
        api(model_dir, DIGITS__INLINE_READ_MS=GENEROUS_MS) as url,
        httpx.Client(timeout=30) as client,
    ):
        for _ in range(8):
            read(client, url, image)
        # Measured on the threads first, then run where the loop is.
        assert all(on_read_thread(t) for t in where.threads[:3]), where.threads
        loop_threads = set(where.threads[3:])
        assert len(loop_threads) == 1, where.threads
        assert not on_read_thread(loop_threads.pop()), where.threads
        assert runs(client, url) == {"thread": 3.0, "loop": 5.0}


def test_a_big_image_is_read_on_a_thread(model_dir: Path, where: Where) -> None:
    side = 1100
    assert side * side > INLINE_MAX_PIXELS
    with (
        api(model_dir, DIGITS__INLINE_READ_MS=GENEROUS_MS) as url,
        httpx.Client(timeout=30) as client,
    ):
        for _ in range(4):
            read(client, url, png_bytes(seven()))
        assert not on_read_thread(where.threads[-1]), where.threads  # small ones: the loop
        read(client, url, png_bytes(seven(side)))
        assert on_read_thread(where.threads[-1]), where.threads


def test_a_slow_model_never_runs_on_the_loop(model_dir: Path, where: Where) -> None:
    where.burn_s = 0.02  # CPU per read, above DIGITS__INLINE_READ_MS (3 ms)
    with api(model_dir) as url, httpx.Client(timeout=30) as client:
        for _ in range(6):
            read(client, url, png_bytes(seven()))
    assert len(where.threads) == 6
    assert all(on_read_thread(t) for t in where.threads), where.threads


def test_inline_reads_can_be_turned_off(model_dir: Path, where: Where) -> None:
    with (
        api(model_dir, DIGITS__INLINE_READ_MS="0") as url,
        httpx.Client(timeout=30) as client,
    ):
        for _ in range(6):
            read(client, url, png_bytes(seven()))
        assert runs(client, url) == {"thread": 6.0}
    assert all(on_read_thread(t) for t in where.threads), where.threads


def _raw_read(image: bytes) -> bytes:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--B--\r\n"
    )
    head = (
        "POST /v1/read HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_the_edge_counts_every_waiting_read_back_to_zero(model_dir: Path, where: Where) -> None:
    """The loop's queue of reads, as the edge counts it, must not drift: a leak would make
    every later read look queued (and send it to the threads for good)."""
    protocol = EdgeProtocol.configure(header_timeout_s=5, body_timeout_s=0.5, max_connections=100)
    waiting = protocol.reads_waiting
    assert waiting is not None
    image = png_bytes(seven())
    with api(model_dir, http=protocol) as url:
        port = int(url.rsplit(":", 1)[1])
        # A burst of concurrent reads.
        with httpx.Client(timeout=30) as client:
            threads = [threading.Thread(target=read, args=(client, url, image)) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        # Two reads pipelined on one connection: the second's task is made when its turn comes.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_raw_read(image) * 2)
            for _ in range(2):
                response = http.client.HTTPResponse(sock)
                response.begin()
                assert response.status == 200
                response.read()
        # A client gone mid-body, and one whose body never completes (the edge's 408).
        for then_close in (True, False):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(_raw_read(image)[:-40])
                if not then_close:
                    sock.settimeout(5)
                    assert sock.recv(100).startswith(b"HTTP/1.1 408")
        deadline = time.monotonic() + 5
        while waiting.count != 0:
            assert time.monotonic() < deadline, waiting.count
            time.sleep(0.02)
        assert len(where.threads) == 14


# --------------------------------------------------------------------------- the rule itself


def measured(admission: ReadAdmission, cpu_s: float, key: object, times: int = 3) -> None:
    for _ in range(times):
        admission.record_small(cpu_s, key)


def test_the_rule_for_running_a_read_on_the_loop() -> None:
    key = object()
    a = ReadAdmission(2, 8, inline_max_s=0.003)
    try:
        small = 200 * 200
        # Not before three small reads with this ensemble are measured.
        measured(a, 0.001, key, times=2)
        assert not a.inline_ok(small, key, waiting=0, timeout_s=5)
        a.record_small(0.001, key)
        assert a.inline_ok(small, key, waiting=0, timeout_s=5)
        # Never an image over the pixel bound, or one whose header could not be read.
        assert not a.inline_ok(INLINE_MAX_PIXELS + 1, key, waiting=0, timeout_s=5)
        assert not a.inline_ok(None, key, waiting=0, timeout_s=5)
        # A new ensemble is measured afresh.
        assert not a.inline_ok(small, object(), waiting=0, timeout_s=5)
        # Under load: while the loop's queue is done within a quarter of the timeout.
        assert a.inline_ok(small, key, waiting=100, timeout_s=5)  # 0.1 s of 1.25 s
        assert not a.inline_ok(small, key, waiting=100, timeout_s=0.2)
    finally:
        a.shutdown()


@pytest.mark.parametrize(
    ("cpu_s", "on_the_loop"),
    [
        (0.002, True),  # a small PNG
        (0.004, False),  # a ~900 px photo: the threads did better with it, even alone
    ],
)
def test_quick_reads_run_on_the_loop_slower_ones_never(cpu_s: float, on_the_loop: bool) -> None:
    key = object()
    a = ReadAdmission(2, 8, inline_max_s=0.003)
    try:
        measured(a, cpu_s, key)
        assert a.inline_ok(1000, key, waiting=0, timeout_s=5) is on_the_loop
        assert a.inline_ok(1000, key, waiting=3, timeout_s=5) is on_the_loop
    finally:
        a.shutdown()


def test_turned_off_nothing_runs_on_the_loop() -> None:
    key = object()
    a = ReadAdmission(2, 8, inline_max_s=0.0)
    try:
        measured(a, 0.0001, key)
        assert not a.inline_ok(1000, key, waiting=0, timeout_s=5)
    finally:
        a.shutdown()
