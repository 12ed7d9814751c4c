"""Latency and throughput of `POST /v1/read` over real HTTP: the HTTP floor, this project and the
BentoML peer, under the same load from the same load generator, in one run (Linux).

Servers (`--servers`), each started here on loopback and stopped after its runs:
  floor    ops/read_floor.py: Litestar + uvicorn parsing the multipart form, fixed JSON answer
  ours     `digits serve` once per TTA profile (`--profiles`; `--threads` -> APP__THREADS),
           or the server already running at `--url`
  bentoml  ../shared/peers/bentoml (`bentoml serve`, its own venv `--peer-venv`; skipped with a
           note when that venv is absent), PEER_MAX_LATENCY_MS=5000 as its README runs it
Upload sets (`--sets`):
  png      MNIST test digits as 112x112 dark-ink-on-white PNGs, made as the peer's check.py does
  photo    ~900 px photo JPEGs: the photo kinds of `--set DIR` (ops/make_realistic_set.py
           output), else 48 generated with those kinds
  phone    8 distinct 12 MP phone photos (4032x3024 JPEG, every other one stored sideways with
           an EXIF orientation) from make_realistic_set.phone_photo, reused
Per server and set, after a warm-up of 40 requests from 8 clients (BentoML's batcher calibrates on
its first batches): one keep-alive client back to back (p50/p95/p99 after 20 more warm-up
requests), then 8 and 32 concurrent clients (req/s of all answers, p50/p95 of all answers, non-200
answers by status; `conn`: no HTTP answer); with `--rounds R` each of those R times, in alternating
order, pooled (the machine's speed drifts; both counts then see the same drift). Every figure also
as a ratio to the floor's from this run. Then the overload phase, ours only: `digits serve`
restarted with DIGITS__PREDICT_TIMEOUT_SECONDS=0.5, 128 clients (one connection each) for 10 s on
the PNGs, twice: clients that wait out Retry-After, then a retry storm that does not; answers 200 /
503 / 504 / other, p95 of the 200s and of the 503s, req/s of the 200s. The load generator is a raw
HTTP/1.1 client on asyncio with each request encoded once (httpx spent ~1.5 ms of CPU a request).
The tables go to stdout, ready for ops/BENCHMARKS.md; progress goes to stderr.

    ./dev run python ops/bench_read.py                      # all servers, sets and phases
    ./dev run python ops/bench_read.py --set /tmp/realistic --peer-venv /tmp/peer-bentoml-venv
    ./dev run python ops/bench_read.py --servers floor,ours --sets png --profiles none,strong
    ./dev run python ops/bench_read.py --url http://127.0.0.1:8000 --servers floor,ours
    ./dev run python ops/bench_read.py --servers floor,ours --rounds 4   # 8 vs 32 clients, paired
    ./dev run python ops/bench_read.py --requests 30 --overload-seconds 2   # a functional check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.metadata
import importlib.util
import io
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt
from PIL import Image

Upload = tuple[str, bytes, str]
Digits = npt.NDArray[np.uint8]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALISTIC_SCRIPT = ROOT / "ops" / "make_realistic_set.py"
FLOOR_SCRIPT = ROOT / "ops" / "read_floor.py"
PEER_DIR = SHARED / "peers" / "bentoml"

SET_TITLES = {"png": "112 px PNG", "photo": "900 px photo JPEG", "phone": "12 MP phone photo"}
SERVER_KEYS = ("floor", "ours", "bentoml")
FLOOR_NAME = "HTTP floor"
PHOTO_KINDS = ("photo_dark_ink", "photo_blue_ink", "photo_shadow")
PNG_COUNT, PHOTO_COUNT, PHONE_COUNT, FOLDER_COUNT = 200, 48, 8, 200
PHONE_TURNS = (0, 1)  # cycled: upright, then stored sideways with EXIF orientation 6
SEED = 0

CONN_ERROR = 0  # the status recorded when no HTTP answer came (refused, reset, timed out)
WARMUP_REQUESTS = 40
SEQUENTIAL_WARMUP = 20
CONCURRENCY = (8, 32)
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
OVERLOAD_CLIENTS = 128
OVERLOAD_PREDICT_TIMEOUT = "0.5"


# --------------------------------------------------------------------------- uploads


@dataclass(frozen=True)
class UploadSet:
    key: str
    uploads: list[Upload]

    @property
    def title(self) -> str:
        return SET_TITLES[self.key]

    def describe(self) -> str:
        mean_kb = statistics.mean(len(u[1]) for u in self.uploads) / 1024
        side = max(max(Image.open(io.BytesIO(u[1])).size) for u in self.uploads)
        return f"{len(self.uploads)} distinct uploads, mean {mean_kb:,.1f} KB, up to {side} px"


def load_realistic() -> ModuleType:
    """ops/make_realistic_set.py, imported by path (ops/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_realistic_set", REALISTIC_SCRIPT)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {REALISTIC_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def content_type(name: str) -> str:
    return "image/png" if name.endswith(".png") else "image/jpeg"


def png_uploads(images: Digits, count: int) -> list[Upload]:
    """Exactly the peer's check.py `samples()`: inverted, bilinear to 112x112, PNG."""
    out = []
    for i in range(count):
        img = Image.fromarray(255 - images[i]).resize((112, 112), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((f"{i}.png", buf.getvalue(), "image/png"))
    return out


def folder_uploads(folder: Path, kinds: Sequence[str], count: int) -> list[Upload]:
    with (folder / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] in kinds][:count]
    if not rows:
        raise SystemExit(f"{folder / 'labels.csv'} lists none of the kinds {', '.join(kinds)}")
    return [
        (Path(r["path"]).name, (folder / r["path"]).read_bytes(), content_type(r["path"]))
        for r in rows
    ]


def photo_uploads(realistic: ModuleType, images: Digits, count: int) -> list[Upload]:
    out = []
    for i in range(count):
        kind = PHOTO_KINDS[i % len(PHOTO_KINDS)]
        data, ext = getattr(realistic, kind)(images[i], np.random.default_rng([SEED, i]))
        out.append((f"{kind}_{i}.{ext}", data, content_type(ext)))
    return out


def phone_uploads(realistic: ModuleType, images: Digits, count: int) -> list[Upload] | None:
    """12 MP JPEGs from `phone_photo`, or None when make_realistic_set.py has none."""
    phone_photo = getattr(realistic, "phone_photo", None)
    if phone_photo is None:
        return None
    out = []
    for i in range(count):
        turns = PHONE_TURNS[i % len(PHONE_TURNS)]
        rng = np.random.default_rng([SEED, 12, i])
        out.append(
            (f"phone_{i}.jpg", phone_photo(images[i], rng, quarter_turns=turns), "image/jpeg")
        )
    return out


def build_sets(
    keys: Sequence[str], folder: Path | None, realistic: ModuleType, images: Digits
) -> list[UploadSet]:
    sets = []
    for key in keys:
        progress(f"making the {SET_TITLES[key]} uploads")
        uploads: list[Upload] | None
        if key == "png":
            uploads = png_uploads(images, PNG_COUNT)
        elif key == "photo" and folder is not None:
            uploads = folder_uploads(folder, PHOTO_KINDS, FOLDER_COUNT)
        elif key == "photo":
            uploads = photo_uploads(realistic, images, PHOTO_COUNT)
        else:
            uploads = phone_uploads(realistic, images, PHONE_COUNT)
        if uploads is None:
            note(f"{SET_TITLES[key]} skipped: {REALISTIC_SCRIPT.name} has no `phone_photo` yet")
            continue
        sets.append(UploadSet(key, uploads))
    return sets


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    """A server to start (`cmd`, given `--port N` at the end) or one already running (`url`)."""

    name: str
    cmd: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = ROOT


def floor_spec() -> ServerSpec:
    return ServerSpec(FLOOR_NAME, (sys.executable, str(FLOOR_SCRIPT), "--host", "127.0.0.1"))


def ours_spec(profile: str, threads: int | None, **extra: str) -> ServerSpec:
    env = {"DIGITS__TTA_PROFILE": profile, "APP__LOG_LEVEL": "warning", **extra}
    if threads is not None:
        env["APP__THREADS"] = str(threads)
    cmd = (sys.executable, "-m", "handwriting_ai.cli", "serve", "--host", "127.0.0.1")
    return ServerSpec(f"this project (TTA {profile})", cmd, env=env)


def bentoml_spec(venv: Path) -> ServerSpec:
    env = {
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": "/tmp/peer-bentoml-home",
        "PEER_MODEL_DIR": str(ROOT / "models"),
        "PEER_MAX_LATENCY_MS": "5000",
    }
    cmd = (str(venv / "bin" / "bentoml"), "serve", "service:DigitReader", "--host", "127.0.0.1")
    return ServerSpec("BentoML peer", cmd, env=env, cwd=PEER_DIR)


def server_specs(args: argparse.Namespace) -> list[ServerSpec]:
    specs = []
    for key in args.servers:
        if key == "floor":
            specs.append(floor_spec())
        elif key == "ours" and args.url is not None:
            specs.append(ServerSpec(f"this project ({args.url})", url=args.url))
        elif key == "ours":
            specs += [ours_spec(p, args.threads) for p in args.profiles]
        elif (args.peer_venv / "bin" / "bentoml").is_file() and PEER_DIR.is_dir():
            specs.append(bentoml_spec(args.peer_venv))
        else:
            note(f"BentoML peer skipped: no {args.peer_venv}/bin/bentoml or no {PEER_DIR}")
    return specs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_stat(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ...; [] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(entry.name)):
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return bool(stat) and stat[0] not in ("Z", "X")


def end_all(pids: Sequence[int]) -> None:
    """SIGTERM the processes still alive, then SIGKILL those alive 10 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's pid, then end whatever it started that outlived it (BentoML's
    workers run in sessions of their own, out of reach of a process-group signal)."""
    family = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session): stragglers
    end_all(family)
    survivors = [p for p in family if alive(p)]
    if survivors:
        note(f"processes still running after the stop: {survivors}")


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: IO[bytes], name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-3000:]
    raise SystemExit(f"{name} did not become ready (exit code {proc.poll()}):\n{tail}")


@contextlib.contextmanager
def running(spec: ServerSpec) -> Iterator[str]:
    """The server's base URL while it runs; started here unless it has a `url`."""
    if spec.url is not None:
        yield spec.url
        return
    port = free_port()
    progress(f"starting {spec.name} on port {port}")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*spec.cmd, "--port", str(port)],
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only this script, which stops it
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, log, spec.name)
            yield url
        finally:
            stop(proc)


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Answer:
    status: int  # CONN_ERROR when no HTTP answer came
    ms: float
    shed: bool = False  # a 503 `{"code": "overloaded"}` with a Retry-After header
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class Phase:
    answers: list[Answer]
    seconds: float

    def ms(self, status: int | None = None) -> list[float]:
        return [a.ms for a in self.answers if status is None or a.status == status]

    def rps(self, status: int | None = None) -> float:
        return len(self.ms(status)) / self.seconds if self.seconds > 0 else math.nan

    def counts(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


@dataclass(frozen=True)
class Measured:
    sequential: Phase
    concurrent: dict[int, Phase]


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


BOUNDARY = "benchreadboundary7d9"


def encode_request(up: Upload, host: str) -> bytes:
    """One keep-alive multipart POST, built once per upload: the load generator spends its CPU
    on sending and parsing, not on re-encoding forms (httpx costs ~1.5 ms of CPU a request here,
    more than the floor's whole answer, and shares the two cores with the servers)."""
    name, data, ctype = up
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/read HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before an answer")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
        await reader.readline()
        return Reply(status, headers, body)
    return Reply(status, headers, await reader.readexactly(int(headers.get("content-length", 0))))


def answer_of(reply: Reply, started: float) -> Answer:
    ms = ms_since(started)
    if reply.status != 503 or "retry-after" not in reply.headers:
        return Answer(reply.status, ms)
    try:
        body = json.loads(reply.body)
    except ValueError:
        return Answer(503, ms)
    shed = isinstance(body, dict) and body.get("code") == "overloaded"
    try:
        retry_after_s = float(reply.headers["retry-after"])
    except ValueError:
        retry_after_s = 0.0
    return Answer(503, ms, shed, retry_after_s)


class Client:
    """One keep-alive HTTP/1.1 connection, reopened after a close or an error."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = reader, writer
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def post(self, request: bytes) -> Answer:
        started = time.perf_counter()
        try:
            reader, writer = await self._open()
            writer.write(request)
            reply = await asyncio.wait_for(read_reply(reader), REQUEST_TIMEOUT_S)
        except (
            OSError,
            ConnectionError,
            ValueError,
            IndexError,
            TimeoutError,
            asyncio.IncompleteReadError,
        ):
            await self.close()
            return Answer(CONN_ERROR, ms_since(started))
        if reply.headers.get("connection", "").lower() == "close":
            await self.close()
        return answer_of(reply, started)


def requests_for(url: str, uploads: list[Upload]) -> list[bytes]:
    return [encode_request(up, urlsplit(url).netloc) for up in uploads]


async def _sequential(url: str, uploads: list[Upload], n: int) -> Phase:
    requests = requests_for(url, uploads)
    client = Client(url)
    try:
        for i in range(SEQUENTIAL_WARMUP):
            await client.post(requests[i % len(requests)])
        started = time.perf_counter()
        answers = [await client.post(requests[i % len(requests)]) for i in range(n)]
        return Phase(answers, time.perf_counter() - started)
    finally:
        await client.close()


def sequential(url: str, uploads: list[Upload], n: int) -> Phase:
    """One keep-alive client back to back; the first SEQUENTIAL_WARMUP answers not kept."""
    return asyncio.run(_sequential(url, uploads, n))


async def load(
    url: str,
    uploads: list[Upload],
    clients: int,
    *,
    requests: int | None = None,
    seconds: float | None = None,
    honour_retry_after: bool = False,
) -> Phase:
    """`clients` clients, one connection each, sharing `requests` requests; with `seconds`,
    none starts a request after that long, and the in-flight ones are waited for. With
    `honour_retry_after`, a client told 503 + Retry-After waits that long before its next."""
    answers: list[Answer] = []
    counter = iter(range(requests)) if requests is not None else itertools.count()
    encoded = requests_for(url, uploads)

    async def one_client(client: Client, stop_at: float) -> None:
        try:
            for i in counter:
                if time.perf_counter() >= stop_at:
                    return
                answer = await client.post(encoded[i % len(encoded)])
                answers.append(answer)
                if honour_retry_after and answer.retry_after_s > 0:
                    pause = min(answer.retry_after_s, stop_at - time.perf_counter())
                    await asyncio.sleep(max(0.0, pause))
        finally:
            await client.close()

    pool = [Client(url) for _ in range(clients)]
    started = time.perf_counter()
    stop_at = started + seconds if seconds is not None else math.inf
    await asyncio.gather(*(one_client(client, stop_at) for client in pool))
    return Phase(answers, time.perf_counter() - started)


def warm_up(url: str, uploads: list[Upload]) -> None:
    asyncio.run(load(url, uploads, CONCURRENCY[0], requests=WARMUP_REQUESTS))


def measure(url: str, uploads: list[Upload], n: int, rounds: int = 1) -> Measured:
    """One client, then each concurrency `rounds` times in alternating order (8, 32, 32, 8,
    ...), pooled: a machine whose speed drifts during the run then slows both alike."""
    warm_up(url, uploads)
    seq = sequential(url, uploads, n)
    runs: dict[int, list[Phase]] = {c: [] for c in CONCURRENCY}
    for r in range(rounds):
        for c in CONCURRENCY if r % 2 == 0 else CONCURRENCY[::-1]:
            runs[c].append(asyncio.run(load(url, uploads, c, requests=n)))
    if rounds > 1:
        each = "; ".join(
            f"{c}: {', '.join(fmt_rps(p.rps()) for p in ps)}" for c, ps in runs.items()
        )
        progress(f"req/s by round, {each}")
    conc = {
        c: Phase([a for p in ps for a in p.answers], sum(p.seconds for p in ps))
        for c, ps in runs.items()
    }
    return Measured(seq, conc)


def run_servers(
    specs: Sequence[ServerSpec], sets: Sequence[UploadSet], n: int, rounds: int = 1
) -> dict[str, dict[str, Measured]]:
    """results[server name][set key]; each server started once for all its sets."""
    results: dict[str, dict[str, Measured]] = {}
    for spec in specs:
        with running(spec) as url:
            for upload_set in sets:
                got = measure(url, upload_set.uploads, n, rounds)
                results.setdefault(spec.name, {})[upload_set.key] = got
                progress(f"{spec.name}, {upload_set.title}: {summary(got)}")
    return results


def overload(spec: ServerSpec, uploads: list[Upload], seconds: float) -> dict[str, Phase]:
    """Two kinds of client: ones that wait out Retry-After (as a client should), and a retry
    storm that sends its next request at once (the worst case)."""
    phases = {}
    with running(spec) as url:
        for kind, honour in (("honour Retry-After", True), ("retry at once", False)):
            warm_up(url, uploads)
            progress(f"overload: {OVERLOAD_CLIENTS} clients for {seconds:g} s, {kind}")
            phases[kind] = asyncio.run(
                load(url, uploads, OVERLOAD_CLIENTS, seconds=seconds, honour_retry_after=honour)
            )
    return phases


# --------------------------------------------------------------------------- report


def progress(text: str) -> None:
    print(f"bench_read: {text}", file=sys.stderr, flush=True)


def note(text: str) -> None:
    print(f"> note: {text}\n", flush=True)


def fmt_ms(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def fmt_rps(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.0f}"


def ratio(v: float, base: float | None) -> str:
    """` (6.3x)`: v over the floor's figure; empty without a usable floor figure."""
    if base is None or math.isnan(v) or math.isnan(base) or base <= 0:
        return ""
    r = v / base
    return f" ({r:.0f}x)" if r >= 10 else f" ({r:.2g}x)"


def status_label(status: int) -> str:
    return "conn" if status == CONN_ERROR else str(status)


def errors(phase: Phase) -> str:
    bad = sorted((s, c) for s, c in phase.counts().items() if s != 200)
    if not bad:
        return "0 errors"
    return "errors " + ", ".join(f"{status_label(s)}: {c}" for s, c in bad)


def percentiles(phase: Phase, floor: Phase | None, qs: Sequence[float]) -> str:
    cells = []
    for q in qs:
        v = pct(phase.ms(), q)
        cells.append(fmt_ms(v) + ratio(v, pct(floor.ms(), q) if floor else None))
    return " / ".join(cells)


def concurrent_cell(phase: Phase, floor: Phase | None) -> str:
    rps = phase.rps()
    speed = fmt_rps(rps) + ratio(rps, floor.rps() if floor else None)
    return f"{speed} req/s, {percentiles(phase, floor, (0.5, 0.95))} ms, {errors(phase)}"


def row(name: str, got: Measured, floor: Measured | None) -> str:
    cells = [
        name,
        percentiles(got.sequential, floor.sequential if floor else None, (0.5, 0.95, 0.99)),
    ]
    if got.sequential.counts()[200] != len(got.sequential.answers):
        cells[-1] += f", {errors(got.sequential)}"
    for c in CONCURRENCY:
        cells.append(concurrent_cell(got.concurrent[c], floor.concurrent[c] if floor else None))
    return "| " + " | ".join(cells) + " |"


def summary(got: Measured) -> str:
    seq = got.sequential
    conc = ", ".join(f"{c} clients {fmt_rps(p.rps())} req/s" for c, p in got.concurrent.items())
    return f"1 client p50 {fmt_ms(pct(seq.ms(), 0.5))} ms, {conc}"


def set_table(upload_set: UploadSet, results: dict[str, dict[str, Measured]]) -> list[str]:
    floor = results.get(FLOOR_NAME, {}).get(upload_set.key)
    lines = [
        f"### {upload_set.title}: {upload_set.describe()}",
        "",
        "| server | 1 client p50 / p95 / p99 ms | "
        + " | ".join(f"{c} clients req/s, p50 / p95 ms" for c in CONCURRENCY)
        + " |",
        "|---|---|" + "---|" * len(CONCURRENCY),
    ]
    for name, by_set in results.items():
        if upload_set.key in by_set:
            base = None if name == FLOOR_NAME else floor
            lines.append(row(name, by_set[upload_set.key], base))
    return [*lines, ""]


def overload_row(kind: str, phase: Phase) -> str:
    counts = phase.counts()
    shed = sum(a.shed for a in phase.answers)
    other = sorted((s, c) for s, c in counts.items() if s not in (200, 503, 504))
    cells = [
        kind,
        str(counts[200]),
        f"{counts[503]} ({shed})",
        str(counts[504]),
        ", ".join(f"{status_label(s)}: {c}" for s, c in other) or "0",
        fmt_ms(pct(phase.ms(200), 0.95)),
        fmt_ms(pct(phase.ms(503), 0.95)),
        fmt_rps(phase.rps(200)),
    ]
    return "| " + " | ".join(cells) + " |"


def overload_table(name: str, phases: dict[str, Phase], seconds: float) -> list[str]:
    return [
        f"### Overload: {name}, DIGITS__PREDICT_TIMEOUT_SECONDS={OVERLOAD_PREDICT_TIMEOUT}, "
        f"{OVERLOAD_CLIENTS} clients for {seconds:g} s, {SET_TITLES['png']}",
        "",
        "| clients | 200 | 503 (of which `overloaded` + Retry-After) | 504 | other "
        "| p95 of 200s ms | p95 of 503s ms | 200s req/s |",
        "|---|---|---|---|---|---|---|---|",
        *(overload_row(kind, phase) for kind, phase in phases.items()),
        "",
    ]


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def header(args: argparse.Namespace) -> list[str]:
    dirty = " (dirty tree)" if git("status", "--porcelain") else ""
    python = sys.version.split()[0]
    commit = git("rev-parse", "--short", "HEAD")
    return [
        f"## `POST /v1/read`: {time.strftime('%Y-%m-%d')}, commit {commit}"
        f"{dirty}; {os.cpu_count()} CPUs ({cpu_model()}), Python {python}, "
        f"torch {importlib.metadata.version('torch')}",
        "",
        f"{args.requests} requests per phase after {WARMUP_REQUESTS} warm-up requests from "
        f"{CONCURRENCY[0]} clients (1 client: {SEQUENTIAL_WARMUP} more)"
        + (
            f"; the concurrent phases {args.rounds} times each, in alternating order, pooled"
            if args.rounds > 1
            else ""
        )
        + ". (Nx): the figure over "
        "the HTTP floor's in this run. req/s and percentiles count every answer; errors are "
        "the non-200 answers by status (conn: no HTTP answer).",
        "",
    ]


# --------------------------------------------------------------------------- main


def comma_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", type=Path, default=None, help="realistic set (photo kinds)")
    parser.add_argument("--mnist-dir", type=Path, default=SHARED / "data" / "mnist")
    parser.add_argument("--requests", type=int, default=400, help="per phase")
    parser.add_argument("--servers", type=comma_list(SERVER_KEYS), default=list(SERVER_KEYS))
    parser.add_argument("--sets", type=comma_list(tuple(SET_TITLES)), default=list(SET_TITLES))
    parser.add_argument("--profiles", type=lambda s: s.split(","), default=["none"])
    parser.add_argument("--threads", type=int, default=None, help="APP__THREADS for ours")
    parser.add_argument("--url", default=None, help="measure this running server as ours")
    parser.add_argument("--peer-venv", type=Path, default=Path("/tmp/peer-bentoml-venv"))
    parser.add_argument(
        "--rounds", type=int, default=1, help="concurrent phases, alternated and pooled"
    )
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.overload_seconds <= 0:
        parser.error("--overload-seconds must be > 0")
    return args


def run_overload(args: argparse.Namespace, pngs: list[Upload]) -> list[str]:
    if args.skip_overload or "ours" not in args.servers:
        return []
    if args.url is not None:
        note("overload phase skipped: it restarts our server, which --url does not start")
        return []
    extra = {"DIGITS__PREDICT_TIMEOUT_SECONDS": OVERLOAD_PREDICT_TIMEOUT}
    spec = ours_spec(args.profiles[0], args.threads, **extra)
    return overload_table(
        spec.name, overload(spec, pngs, args.overload_seconds), args.overload_seconds
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print("\n".join(header(args)), flush=True)
    realistic = load_realistic()
    images, _labels = realistic.load_mnist_test(args.mnist_dir)
    sets = build_sets(args.sets, args.set, realistic, images)
    results = run_servers(server_specs(args), sets, args.requests, args.rounds)
    for upload_set in sets:
        print("\n".join(set_table(upload_set, results)), flush=True)
    print("\n".join(run_overload(args, png_uploads(images, PNG_COUNT))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
