"""How a child of `digits up` dies with it, whatever ends `digits up` (even SIGKILL).

Three layers, each enough on its own for the process it covers:

- `die_with_parent` (run in the child between fork and exec): `PR_SET_PDEATHSIG` asks Linux to
  send a signal when the supervisor dies; SIGKILL for every child, since the supervisor only dies
  with live children when it was killed or crashed, and nobody is left to stop them in order.
- `watch_parent` (run by a Python child, `digits serve` and the worker): a daemon thread that
  exits the process hard as soon as its parent is no longer the supervisor named in
  `HANDWRITING_AI_PARENT_PID` (a check that a parent-death signal cannot miss: it also covers the
  supervisor dying between fork and `prctl`).
- the group guard (`guard.py`): SIGKILLs each child's whole process group (training
  subprocesses included) once the supervisor is gone.

Only the standard library here: the worker and `digits serve` import it early.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, MutableMapping

PARENT_PID_ENV = "HANDWRITING_AI_PARENT_PID"
ORPHAN_EXIT_CODE = 3
STOP_DEADLINE_EXIT_CODE = 4
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, parent_pid: int) -> None:
    """In the child, before exec: get `sig` when the parent dies (Linux; elsewhere a no-op).

    The signal is tied to the thread that forked us; `digits up` forks from its main thread only.
    If the parent already died before the `prctl` took effect, the signal would never come, so
    the child sends it to itself."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def parent_pid_from_env(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The supervisor's pid from `HANDWRITING_AI_PARENT_PID`, removed from the environment so that
    our own subprocesses (whose parent is us) do not inherit a watch meant for us."""
    env = os.environ if environ is None else environ
    raw = env.pop(PARENT_PID_ENV, "").strip()
    try:
        pid = int(raw)
    except ValueError:
        return None
    return pid if pid > 1 else None


def exit_hard(
    reason: str, *, event: str = "parent_gone", group: bool = True, code: int = ORPHAN_EXIT_CODE
) -> None:
    """Say why on stderr (one JSON line), then end this process now: with `group`, SIGKILL to our
    own process group when we lead it (as every child of `digits up` does: that takes our
    subprocesses too), else (or then) `os._exit(code)`, skipping the interpreter's teardown."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(json.dumps({"event": event, "level": "error", "reason": reason}))
        sys.stderr.write("\n")
        sys.stderr.flush()
    if group and os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(code)


def exit_hard_after(seconds: float, reason: str) -> threading.Thread:
    """A stop deadline: a daemon thread that ends this process (`os._exit`, our process only)
    `seconds` from now, whatever the rest of the process is still waiting for."""

    def deadline() -> None:
        time.sleep(seconds)
        exit_hard(reason, event="stop_deadline", group=False, code=STOP_DEADLINE_EXIT_CODE)

    thread = threading.Thread(target=deadline, name="stop-deadline", daemon=True)
    thread.start()
    return thread


def watch_parent(
    parent_pid: int,
    *,
    interval_s: float = 0.25,
    on_gone: Callable[[str], None] = exit_hard,
) -> threading.Thread:
    """A daemon thread that calls `on_gone` (by default: exit hard) once our parent is no longer
    `parent_pid`; the check runs at once, then every `interval_s`."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_gone(f"parent {parent_pid} is gone (our parent is now {os.getppid()})")

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def watch_parent_from_env(*, interval_s: float = 0.25) -> threading.Thread | None:
    """`watch_parent` for the supervisor named in `HANDWRITING_AI_PARENT_PID`, if any."""
    parent = parent_pid_from_env()
    if parent is None:
        return None
    return watch_parent(parent, interval_s=interval_s)
