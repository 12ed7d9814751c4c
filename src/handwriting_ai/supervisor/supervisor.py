"""Run child processes, restart the ones that die (with backoff), stop them all on a signal.

Each child runs in its own process group (its own session), so Ctrl-C in the terminal reaches only
the supervisor, which then decides the order: SIGTERM to every child's main process (a worker
stops reading and leaves its unfinished jobs pending; uvicorn finishes its requests), a wait of
at most the child's stop timeout, then SIGKILL to whatever is left of each child's process group.
A second stop signal skips the waits. If the supervisor itself dies with children alive (only a
kill or a crash can do that: every normal exit goes through `shutdown`), nothing of it is left:
each child gets SIGKILL from Linux (`PR_SET_PDEATHSIG`), watches its parent
(`HANDWRITING_AI_PARENT_PID`), and the group guard (`guard.py`) SIGKILLs every child's process
group, training subprocesses included. See `parent.py`.

The restart policy is two pure functions: `backoff_s` (exponential, capped) and
`failures_after_exit` (a child that ran for `stable_s` starts again from the first delay).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from attrs import define, field, frozen

from handwriting_ai.logging import get_logger
from handwriting_ai.supervisor.parent import PARENT_PID_ENV, die_with_parent

log = get_logger("handwriting_ai.supervisor")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GUARD_SCRIPT = Path(__file__).with_name("guard.py")
GUARD_STOP_TIMEOUT_S = 5.0


def backoff_s(failures: int, *, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Delay before restarting a child that failed `failures` times in a row: `base_s`, then
    doubled each time, never more than `cap_s`. `failures <= 0` means no delay."""
    if failures <= 0:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(failures - 1, 32))


def failures_after_exit(previous: int, uptime_s: float, *, stable_s: float = 30.0) -> int:
    """The consecutive-failure count after an exit: a child that ran at least `stable_s` was
    healthy, so its exit counts as the first failure; a quick death adds to the streak."""
    return 1 if uptime_s >= stable_s else previous + 1


@frozen
class ChildSpec:
    """What to run: `argv` with exactly the environment `env` (not merged with ours)."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(factory=dict)
    stop_wave: int = 0  # on shutdown, higher waves stop (and finish) first
    stop_timeout_s: float | None = None  # SIGTERM to SIGKILL; None: the supervisor's
    pass_fds: tuple[int, ...] = ()  # inherited descriptors (the API's listening socket)


@define
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def spawn(
    argv: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so its process group is its pid); its output goes where
    ours goes. It learns our pid (`HANDWRITING_AI_PARENT_PID`) and gets SIGKILL if we die."""
    return subprocess.Popen(
        list(argv),
        env={**env, PARENT_PID_ENV: str(os.getpid())},
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        # The supervisor forks from its main thread only (the death signal follows the thread).
        preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, os.getpid()),
    )


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of a child's process group (its own training subprocesses)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class GroupGuard:
    """The parent's side of `guard.py`: a process that SIGKILLs every recorded process group
    once we are gone. `add` a child's group when it starts, `remove` it once it is stopped and
    reaped; `ensure` restarts a guard that died (and tells it the groups again); `close` lets it
    exit (it kills any group still recorded)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.groups: set[int] = set()
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(GUARD_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C and a kill of our process group do not reach it
        )
        self.starts += 1
        for pgid in sorted(self.groups):
            self._send(f"+{pgid}")

    def ensure(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            log.error("group_guard_exited", pid=self.process.pid, returncode=self.process.poll())
        self.start()

    def add(self, pgid: int) -> None:
        self.groups.add(pgid)
        self._send(f"+{pgid}")

    def remove(self, pgid: int) -> None:
        self.groups.discard(pgid)
        self._send(f"-{pgid}")

    def _send(self, line: str) -> None:
        process = self.process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(line.encode() + b"\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died: `ensure` starts another and tells it every group

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=GUARD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Supervisor:
    """Keeps `specs` running until `request_stop` (or a stop signal under `run`)."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        stop_timeout_s: float = 45.0,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stable_s: float = 30.0,
        poll_s: float = 0.1,
        hooks: Sequence[Callable[[], None]] = (),
        clock: Callable[[], float] = time.monotonic,
        guard: GroupGuard | None = None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.guard = guard
        self.stop_timeout_s = stop_timeout_s
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.hooks = list(hooks)
        self.clock = clock
        self.stop_signals = 0
        self.stopping = False

    def child(self, name: str) -> Child:
        for child in self.children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def _start(self, child: Child) -> None:
        child.process = spawn(child.spec.argv, child.spec.env, child.spec.pass_fds)
        if self.guard is not None:
            self.guard.add(child.process.pid)
        child.started_at = self.clock()
        child.restart_at = None
        log.info("child_started", child=child.spec.name, pid=child.process.pid)

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.process is not None
        pid = child.process.pid
        _kill_group(pid)
        if self.guard is not None:
            self.guard.remove(pid)
        uptime = now - child.started_at
        child.failures = failures_after_exit(child.failures, uptime, stable_s=self.stable_s)
        delay = backoff_s(child.failures, base_s=self.base_backoff_s, cap_s=self.max_backoff_s)
        child.process = None
        child.restart_at = now + delay
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.error(
            "child_exited",
            child=child.spec.name,
            pid=pid,
            returncode=code,
            how=how,
            uptime_s=round(uptime, 3),
            failures=child.failures,
            restart_in_s=delay,
        )

    def tick(self) -> None:
        """One round: notice exits, restart children whose backoff has passed, run the hooks."""
        now = self.clock()
        if self.guard is not None and not self.stopping:
            self.guard.ensure()
        for child in self.children:
            if child.process is not None:
                code = child.process.poll()
                if code is not None and not self.stopping:
                    self._exited(child, code, now)
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                if self.stopping:
                    continue
                child.restarts += 1
                self._start(child)
                log.warning(
                    "child_restarted",
                    child=child.spec.name,
                    pid=child.pid,
                    restarts=child.restarts,
                    failures=child.failures,
                )
        for hook in self.hooks:
            hook()

    def request_stop(self, signum: int | None = None) -> None:
        """Ask `run` to stop (safe from a signal handler); a second request kills at once."""
        self.stop_signals += 1
        self.stopping = True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signum)

    def shutdown(self) -> None:
        """Stop the children in waves, highest `stop_wave` first (workers before the API they
        upload to): SIGTERM each main process of a wave, wait for them, then SIGKILL what is left
        of their process groups. A second stop request kills every wave at once."""
        self.stopping = True
        requests_at_start = self.stop_signals  # one more request: kill at once
        for wave in sorted({c.spec.stop_wave for c in self.children}, reverse=True):
            members = [c for c in self.children if c.spec.stop_wave == wave]
            live = [c for c in members if c.process is not None and c.process.poll() is None]
            for child in live:
                assert child.process is not None
                log.info("child_stopping", child=child.spec.name, pid=child.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
            timeout_s = max(
                (c.spec.stop_timeout_s or self.stop_timeout_s for c in members),
                default=self.stop_timeout_s,
            )
            deadline = self.clock() + timeout_s
            while any(c.process is not None and c.process.poll() is None for c in live):
                if self.clock() > deadline or self.stop_signals > requests_at_start:
                    log.warning("children_killed", reason="did not stop in time or asked again")
                    break
                time.sleep(0.05)
            for child in members:
                process, child.process = child.process, None
                if process is None:
                    continue
                _kill_group(process.pid)
                code = process.wait()
                if self.guard is not None:
                    self.guard.remove(process.pid)
                log.info("child_stopped", child=child.spec.name, pid=process.pid, returncode=code)

    def run(self, *, install_signals: bool = True, then: Callable[[], None] | None = None) -> int:
        """Start the children and supervise them until a stop signal; 0 after a clean stop.
        `then` runs once the children have stopped, while the stop signals are still ours (so
        a second Ctrl-C during it is a request to hurry, not a KeyboardInterrupt)."""
        previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
        if install_signals:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            if not self.stopping:
                self.start()
            while not self.stopping:
                self.tick()
                time.sleep(self.poll_s)
        finally:
            try:
                self.shutdown()
                if then is not None:
                    then()
            finally:
                for stop_signal, handler in previous.items():
                    signal.signal(stop_signal, handler)
        return 0
