"""`python -m handwriting_ai.worker [--concurrency N] [--burst]`: settings from the environment,
logging configured, then one worker until SIGTERM (or until drained with `--burst`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from handwriting_ai.logging import configure_logging
from handwriting_ai.settings import Settings, load_settings

PARENT_PID_ENV = "HANDWRITING_AI_PARENT_PID"  # set by `digits up`: exit when that process is gone
CRASH_AT_ENV = "HANDWRITING_AI_CRASH_AT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits worker", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1, help="training slots (processes)")
    parser.add_argument("--burst", action="store_true", help="drain the stream, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1:
        raise SystemExit("digits worker: --concurrency must be at least 1")
    settings = load_settings(dict(os.environ))
    configure_logging(settings.app.log_level, settings.app.log_format)
    return run(settings, concurrency=args.concurrency, burst=args.burst)


def run(settings: Settings, *, concurrency: int, burst: bool) -> int:
    """Run one worker with what its launcher put in the environment (`digits worker` too)."""
    from handwriting_ai.worker.serve import run_worker

    parent = os.environ.get(PARENT_PID_ENV, "")
    code = run_worker(
        settings,
        concurrency=concurrency,
        burst=burst,
        # Fault injection for the test suite only: SIGKILL ourselves at a named point.
        crash_at=os.environ.get(CRASH_AT_ENV, ""),
        parent_pid=int(parent) if parent.isdecimal() else None,
    )
    # Everything is closed (children killed, Redis closed, logs written): skip the interpreter's
    # teardown, which with torch loaded takes seconds, so a stop is as quick as it says.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
