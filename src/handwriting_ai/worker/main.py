"""`python -m handwriting_ai.worker [--concurrency N] [--burst] [--metrics-port N]`: settings from
the environment, logging configured, then one worker until SIGTERM (or until drained with
`--burst`), with its Prometheus metrics on `--metrics-port` when given."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from handwriting_ai.logging import configure_logging
from handwriting_ai.settings import Settings, load_settings

PARENT_PID_ENV = "HANDWRITING_AI_PARENT_PID"  # set by `digits up`: exit when that process is gone
CRASH_AT_ENV = "HANDWRITING_AI_CRASH_AT"
MAX_PORT = 65535


def build_parser() -> argparse.ArgumentParser:
    """The same options as `digits worker` (cli.py, which must not import this package to build
    its parser: it would load torch for `digits --help`)."""
    parser = argparse.ArgumentParser(prog="digits worker", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1, help="training slots (processes)")
    parser.add_argument("--burst", action="store_true", help="drain the stream, then exit")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (GET /metrics); 0: none (default)",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="where the metrics port listens"
    )
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """`digits worker` and `python -m handwriting_ai.worker` refuse the same values."""
    if args.concurrency < 1:
        raise SystemExit("digits worker: --concurrency must be at least 1")
    if not 0 <= args.metrics_port <= MAX_PORT:
        raise SystemExit(f"digits worker: --metrics-port must be 0 to {MAX_PORT}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    settings = load_settings(dict(os.environ))
    configure_logging(settings.app.log_level, settings.app.log_format)
    return run(settings, args)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one worker with its parsed options and what its launcher put in the environment
    (`digits worker` too)."""
    from handwriting_ai.worker.serve import run_worker

    parent = os.environ.get(PARENT_PID_ENV, "")
    code = run_worker(
        settings,
        concurrency=args.concurrency,
        burst=args.burst,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        # Fault injection for the test suite only: SIGKILL ourselves at a named point.
        crash_at=os.environ.get(CRASH_AT_ENV, ""),
        parent_pid=int(parent) if parent.isdecimal() else None,
    )
    # Everything is closed (children killed, Redis closed, logs written): skip the interpreter's
    # teardown, which with torch loaded takes seconds, so a stop is as quick as it says.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
