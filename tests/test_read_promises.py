"""Read-path promises that a model answering 7 at a fixed confidence cannot check by itself.

- `center=false` is seen in the returned visual (bounding-box centre, not centre of mass);
- `DIGITS__UNCERTAIN_THRESHOLD` moves `uncertain` both ways;
- `DIGITS__PREDICT_TIMEOUT_SECONDS` covers queueing: with one thread held by a slow read, the next
  read is a 504 `timeout` near the limit and the event loop keeps answering `/healthz`;
- a model that raises is a 500 `internal_error` whose body hides the exception and whose log
  line carries the traceback;
- `DIGITS__VISUALIZE_MAX_KB` caps the visual (an over-cap visual is left out, the read stands).

Slow and failing models are test-only architectures registered in this process for one test
(`monkeypatch` removes them again): they are loaded from disk like any other model.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import structlog
import torch
from attrs import frozen
from torch import nn

from conftest import Serve
from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.logging import configure_logging
from handwriting_ai.models import registry
from helpers import (
    U8,
    Artifact,
    Client,
    assert_error,
    draw_seven,
    make_settings,
    paper,
    png_bytes,
    post_read,
    read_ok,
    seven,
    state_of,
    visual_pixels,
    write_artifact,
)
from worker_support import serve_app

SLOW_ARCH = "test_slow_net"
TORCH = {"DIGITS__BACKEND": "torch"}
FAILING_ARCH = "test_failing_net"
SECRET = "secret-detail-xyz"
GATE_LIMIT_S = 20.0  # a slow forward gives up after this, so a broken test never hangs
CENTRE = 13.5  # the centre of a 28x28 grid in pixel coordinates


# --------------------------------------------------------------------------- center flag


def centre_of_mass(pixels: U8) -> tuple[float, float]:
    weights = pixels.astype(np.float64)
    total = float(weights.sum())
    ys, xs = np.indices(pixels.shape)
    return float((xs * weights).sum()) / total, float((ys * weights).sum()) / total


def box_centre(pixels: U8) -> tuple[float, float]:
    ys, xs = np.nonzero(pixels)
    return (float(xs.min()) + float(xs.max())) / 2, (float(ys.min()) + float(ys.max())) / 2


def off_centre_seven() -> U8:
    """A '7' (heavy top bar, mass far from its box centre) in the top-left of a larger page."""
    page = paper(240)
    page[10:130, 20:140] = draw_seven(paper(120), thickness=10)
    return page


def test_center_flag_is_seen_in_the_visual(client: Client) -> None:
    data = png_bytes(off_centre_seven())
    by_mass = visual_pixels(read_ok(client, data, center="true", visualize="true"))
    by_box = visual_pixels(read_ok(client, data, center="false", visualize="true"))
    default = visual_pixels(read_ok(client, data, visualize="true"))
    assert by_mass.shape == by_box.shape == (28, 28)

    # center=true (and the default): the centre of mass sits at the centre of the grid.
    cx, cy = centre_of_mass(by_mass)
    assert abs(cx - CENTRE) <= 1.0
    assert abs(cy - CENTRE) <= 1.0
    assert np.array_equal(default, by_mass)

    # center=false: the bounding box is centred, and the mass (the top bar) is measurably not.
    bx, by = box_centre(by_box)
    assert abs(bx - CENTRE) <= 1.0
    assert abs(by - CENTRE) <= 1.0
    mx, my = centre_of_mass(by_box)
    assert max(abs(mx - CENTRE), abs(my - CENTRE)) >= 2.0, (mx, my)
    assert my < CENTRE - 2.0  # a 7's mass is high up
    # ...so the two modes really are different placements of the same digit.
    assert not np.array_equal(by_box, by_mass)
    assert abs(int(by_box.sum()) - int(by_mass.sum())) / int(by_mass.sum()) < 0.02


# --------------------------------------------------------------------------- uncertain threshold


def uncertain_at(serve: Serve, model_dir: Path, model: Artifact, threshold: str) -> ReadResponse:
    extra = {"DIGITS__UNCERTAIN_THRESHOLD": threshold}
    client = serve(make_settings(model_dir, [model.model_id], extra))
    return read_ok(client, png_bytes(seven()))


def test_uncertain_threshold_moves_both_ways(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    c = uncertain_at(serve, model_dir, seven_model, "0.7").confidence
    assert 0.05 < c < 0.95, c  # room on both sides
    above = uncertain_at(serve, model_dir, seven_model, repr(c + 0.01))
    below = uncertain_at(serve, model_dir, seven_model, repr(c - 0.01))
    equal = uncertain_at(serve, model_dir, seven_model, repr(c))
    assert above.confidence == below.confidence == equal.confidence == c
    assert above.uncertain is True  # confidence below the threshold
    assert below.uncertain is False
    assert equal.uncertain is False  # "true below this confidence": not at it


# ------------------------------------------------------------------- slow and failing models


class Gate:
    """Shared by every copy of the slow model (the engine deep-copies a module to fuse it)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.entries = 0

    def enter(self) -> None:
        with self._lock:
            self.entries += 1
        self.entered.set()
        if not self.release.wait(GATE_LIMIT_S):
            raise RuntimeError("the slow model was never released")

    def __deepcopy__(self, memo: dict[int, object]) -> Gate:
        return self


class SlowNet(nn.Module):
    """A linear classifier whose forward blocks until the test releases it."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gate.enter()
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


class FailingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{SECRET}: a bug inside the model")


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Gate:
    """The slow architecture, registered for this test only, and one model of it on disk."""
    shared = Gate()
    monkeypatch.setitem(registry._REGISTRY, SLOW_ARCH, lambda: SlowNet(shared))
    torch.manual_seed(5)
    write_artifact(model_dir, "slow_net", arch=SLOW_ARCH, state=state_of(SlowNet(Gate())))
    return shared


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> str:
    monkeypatch.setitem(registry._REGISTRY, FAILING_ARCH, FailingNet)
    torch.manual_seed(6)
    write_artifact(model_dir, "failing_net", arch=FAILING_ARCH, state=state_of(FailingNet()))
    return "failing_net"


@frozen
class Timed:
    response: httpx.Response
    started: float
    ended: float

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


def timed_read(url: str, data: bytes) -> Timed:
    with httpx.Client(timeout=10.0) as http:
        started = time.perf_counter()
        response = http.post(f"{url}/v1/read", files={"file": ("d.png", data, "image/png")})
        return Timed(response, started, time.perf_counter())


def timed_get(url: str) -> Timed:
    with httpx.Client(timeout=5.0) as http:
        started = time.perf_counter()
        response = http.get(url)
        return Timed(response, started, time.perf_counter())


@pytest.fixture
def one_thread_api(model_dir: Path, gate: Gate) -> Iterator[str]:
    # The torch backend: onnxruntime would run an export of the graph, not the gate in forward.
    extra = {"APP__THREADS": "1", "DIGITS__PREDICT_TIMEOUT_SECONDS": "1", **TORCH}
    with serve_app(create_app(make_settings(model_dir, ["slow_net"], extra))) as url:
        try:
            yield url
        finally:
            gate.release.set()  # before the server stops: never leave a thread blocked


def test_queued_read_times_out_while_the_loop_stays_free(one_thread_api: str, gate: Gate) -> None:
    url, data = one_thread_api, png_bytes(seven())
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(timed_read, url, data)
        assert gate.entered.wait(30), "the first read never reached the model"
        # The only inference thread is now held: the next read can only wait in the queue.
        queued = pool.submit(timed_read, url, data)
        probes = [timed_get(f"{url}/healthz") for _ in range(3)]
        second = queued.result(timeout=30)
        first = slow.result(timeout=30)
        entries_while_held = gate.entries

    # /healthz answered at once, while the queued read was still waiting.
    assert all(p.response.status_code == 200 for p in probes)
    assert min(p.elapsed for p in probes) < 0.1, [p.elapsed for p in probes]
    assert max(p.elapsed for p in probes) < 0.9, [p.elapsed for p in probes]
    assert probes[-1].ended < second.ended

    # The queued read never ran, and still ended as a timeout near the 1 s limit.
    assert entries_while_held == 1
    body = assert_error(second.response, 504, "timeout")
    assert body.message == "Prediction did not finish within 1 s."
    assert 0.8 <= second.elapsed < 3.0, second.elapsed
    # The slow read itself timed out too (its thread keeps running until released).
    assert_error(first.response, 504, "timeout")
    assert 0.8 <= first.elapsed < 3.0, first.elapsed

    # Released, the thread is free again and the next read is answered.
    gate.release.set()
    after = timed_read(url, data)
    assert after.response.status_code == 200, after.response.text


@pytest.fixture
def json_logs() -> Iterator[None]:
    """The service's own log set-up (JSON lines on stderr), put back afterwards."""
    saved = structlog.get_config()
    configure_logging("info", "json")
    structlog.configure(cache_logger_on_first_use=False)  # leave other tests' loggers alone
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("json_logs")
def test_model_error_is_internal_error_with_logged_traceback(
    serve: Serve, model_dir: Path, failing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = serve(make_settings(model_dir, [failing], TORCH))  # the bug must run at read time
    capsys.readouterr()
    response = post_read(client, png_bytes(seven()), headers={"X-Request-ID": "boom-1"})

    body = assert_error(response, 500, "internal_error")
    assert set(json.loads(response.text)) == {"code", "message", "request_id"}
    assert body.request_id == "boom-1"
    for leak in (SECRET, "RuntimeError", "Traceback", "forward"):
        assert leak not in response.text

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    logged = [line for line in lines if line.get("event") == "unhandled_error"]
    assert len(logged) == 1, lines
    entry = logged[0]
    assert entry["level"] == "error"
    assert entry["request_id"] == "boom-1"
    assert "Traceback" in entry["exception"]
    assert f"RuntimeError: {SECRET}" in entry["exception"]


# --------------------------------------------------------------------------- visual size cap


def test_visual_over_the_cap_is_left_out(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    data = png_bytes(seven())
    roomy = serve(
        make_settings(model_dir, [seven_model.model_id], {"DIGITS__VISUALIZE_MAX_KB": "1"})
    )
    none = serve(
        make_settings(model_dir, [seven_model.model_id], {"DIGITS__VISUALIZE_MAX_KB": "0"})
    )

    under = read_ok(roomy, data, visualize="true")
    assert under.visual_png_b64 is not None
    png = base64.b64decode(under.visual_png_b64)
    assert 0 < len(png) <= 1024  # a 28x28 grayscale PNG is well under 1 KB
    assert visual_pixels(under).shape == (28, 28)

    over = read_ok(none, data, visualize="true")
    assert over.visual_png_b64 is None  # over the cap: left out, the read still answered
    assert (over.digit, over.probs) == (under.digit, under.probs)
    assert read_ok(roomy, data).visual_png_b64 is None  # not asked for
