"""The group guard of `digits up`: kills its children's process groups once it is gone.

`digits up` starts this script (`python -I guard.py`, standard library only, in a session of its
own so that Ctrl-C and a kill of the terminal's process group do not reach it) with a pipe on its
stdin and writes `+<pgid>` when a child's process group starts and `-<pgid>` once it has stopped
and reaped it. When the pipe reaches end of file — `digits up` exited or was killed, SIGKILL
included, since the kernel closes a dead process's descriptors — or our parent is no longer the
one that started us, the guard sends SIGKILL to every group still recorded (each child with its
own subprocesses: a worker's training processes live in the worker's group) and exits.

It complements the children's parent-death signal and parent watch (`parent.py`): those end the
child itself, the guard ends whatever the child started.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

CHECK_EVERY_S = 0.5


def apply(line: bytes, groups: set[int]) -> None:
    """One protocol line: `+<pgid>` records a group, `-<pgid>` forgets it; anything else is
    ignored (a guard must not die of a bad line)."""
    text = line.strip()
    if len(text) < 2 or text[:1] not in (b"+", b"-"):
        return
    try:
        pgid = int(text[1:])
    except ValueError:
        return
    if pgid <= 1:
        return
    if text[:1] == b"+":
        groups.add(pgid)
    else:
        groups.discard(pgid)


def kill_groups(groups: set[int]) -> None:
    for pgid in sorted(groups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def main() -> int:
    parent = os.getppid()
    fd = sys.stdin.fileno()
    groups: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], CHECK_EVERY_S)
        if os.getppid() != parent:
            break
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            apply(line, groups)
    kill_groups(groups)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
