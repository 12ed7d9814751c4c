"""`streams/typescript/`: generated like the JSON Schemas, valid TypeScript, as strict as Python.

The drift tests hold the committed `.ts` files to `digits schemas`. The rest runs real tools:
TypeScript and zod at the versions `typescript_gen.CHECKED_WITH` pins, installed once into a cache
outside the clone (like `./dev`'s venv), type-check the committed files under `--strict` (and the
strictest flags a bot may use), then node parses what Python publishes. For every document the
verdicts must nest: the JSON Schema accepts => zod accepts => Python's reader accepts (with equal
values). Node and npm are part of the machine and of CI: their absence fails, it never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import attrs
import pytest
from attrs import field, frozen
from jsonschema import Draft202012Validator

from handwriting_ai.contracts.converter import ContractError, converter
from handwriting_ai.contracts.events import (
    EVENT_CLASSES,
    TrainBatch,
    TrainCompleted,
    TrainEpoch,
    TrainEvent,
    TrainFailed,
    TrainUpload,
    decode_event,
    encode_event,
    is_final,
)
from handwriting_ai.contracts.fields import JSON, Doc, doc, field_doc
from handwriting_ai.contracts.jobs import (
    TrainJob,
    dead_letter,
    dead_letter_from_fields,
    dead_letter_to_fields,
    job_from_fields,
    job_from_json,
    job_to_fields,
)
from handwriting_ai.contracts.schema_gen import DIALECT, main, object_schema, schema_files
from handwriting_ai.contracts.typescript_gen import CHECKED_WITH, TS_DIR, render, zod_schema

STREAMS_DIR = Path(__file__).resolve().parents[1] / "streams"
TS = "2025-01-31T12:00:00.000Z"
SNOWFLAKE = 1234567890123456789  # a Discord user id: past 2**53, so JSON.parse rounds it


# --- drift ------------------------------------------------------------------------------------


def test_committed_typescript_matches_the_contracts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--dir", str(STREAMS_DIR)]) == 0, "regenerate: ./dev run digits schemas"
    assert "files up to date" in capsys.readouterr().out
    for path, text in render(schema_files()).items():
        first = text.splitlines()[0]
        assert first.startswith("// Generated"), path
        assert "`digits schemas`" in first
        assert "never edit" in first


def test_check_names_edited_missing_and_stale_typescript(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(tmp_path)]) == 0
    folder = tmp_path / TS_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["index.ts", "schemas.ts", "types.ts"]
    edited = folder / "schemas.ts"
    edited.write_text(edited.read_text().replace(".min(1)", ".min(0)", 1))
    (folder / "index.ts").unlink()
    (folder / "gone.ts").write_text("export {};\n")
    capsys.readouterr()

    assert main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    for name in ["index.ts", "schemas.ts", "gone.ts"]:
        assert f"drifted: {folder / name}" in err
    assert "types.ts" not in err

    assert main(["--dir", str(tmp_path)]) == 0
    assert not (folder / "gone.ts").exists()
    assert main(["--check", "--dir", str(tmp_path)]) == 0


def test_a_keyword_the_generator_does_not_know_is_an_error() -> None:
    with pytest.raises(TypeError, match="format"):
        zod_schema({"type": "string", "format": "email"})


# --- node, typescript and zod, cached outside the clone ----------------------------------------


def _cache_root() -> Path:
    # Beside ./dev's venv: that honours HANDWRITING_AI_CACHE, which conftest hides from tests.
    venv = Path(sys.prefix).resolve()
    if venv.name.startswith("venv-"):
        return venv.parent
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "handwriting-ai"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not on PATH. Node.js 20+ with npm is part of this machine and of CI "
            "(the TypeScript contracts are checked with it); install it. This test never skips.",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """typescript and zod at the pinned versions, installed once per set of pins."""
    npm = _tool("npm")
    pins = json.dumps(CHECKED_WITH, sort_keys=True)
    home = _cache_root() / f"node-{hashlib.sha256(pins.encode()).hexdigest()[:12]}"
    if not (home / ".complete").is_file():
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{home.name}.", dir=home.parent))
        package = {"private": True, "dependencies": CHECKED_WITH}
        (staging / "package.json").write_text(json.dumps(package))
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.fail(
                f"npm could not install {pins} (is the npm registry reachable? "
                f"`npm config get registry`): {done.stderr[-2000:]}",
                pytrace=False,
            )
        (staging / ".complete").touch()
        try:
            staging.rename(home)
        except OSError:  # another run installed the same pins first
            shutil.rmtree(staging, ignore_errors=True)
    return home / "node_modules"


# --- what node parses ---------------------------------------------------------------------------

# check.ts imports the committed files; `describe` only compiles if `type` narrows the union.
CHECK_TS = """
import { z } from "zod";

import * as contracts from "./contracts/index.js";
import { isFinal, parseEventEntry, type TrainEvent } from "./contracts/index.js";
import * as synthetic from "./synthetic/schemas.js";

export function describe(event: TrainEvent): string {
  switch (event.type) {
    case "digits.train.batch.v1":
      return `batch ${event.batch}/${event.total_batches}`;
    case "digits.train.epoch.v1":
      return `epoch ${event.epoch}/${event.total_epochs}`;
    case "digits.train.upload.v1":
      return `upload ${event.status}`;
    case "digits.train.completed.v1":
      return `completed ${event.version ?? "none"}`;
    case "digits.train.failed.v1":
      return `failed ${event.error_kind}`;
    default:
      return event.type;
  }
}

export function unnarrowed(event: TrainEvent): unknown {
  // @ts-expect-error: `batch` is on batch events only, so the union must be narrowed first
  return event.batch;
}

const schemas = new Map<string, z.ZodType>();
for (const [name, value] of [...Object.entries(contracts), ...Object.entries(synthetic)]) {
  if (value instanceof z.ZodType) schemas.set(name, value);
}

export type Case = { id: string; schema: string; input: unknown };

export function run(cases: Case[]): Record<string, unknown>[] {
  return cases.map(({ id, schema, input }) => {
    if (schema === "entry") {
      try {
        const event = parseEventEntry(input as Record<string, string>);
        return { id, ok: true, output: event, final: isFinal(event), summary: describe(event) };
      } catch (error) {
        return { id, ok: false, error: String(error) };
      }
    }
    const found = schemas.get(schema);
    if (found === undefined) return { id, ok: false, error: `no schema ${schema}` };
    const result = found.safeParse(input);
    return result.success
      ? { id, ok: true, output: result.data }
      : { id, ok: false, error: result.error.message };
  });
}
"""

RUN_MJS = """
import { readFileSync, writeFileSync } from "node:fs";
import { run } from "./out/check.js";
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
writeFileSync(process.argv[3], JSON.stringify(run(cases)));
"""

STRICTEST = {
    "strict": True,
    "exactOptionalPropertyTypes": True,
    "noUncheckedIndexedAccess": True,
    "noUnusedLocals": True,
    "noUnusedParameters": True,
    "noImplicitReturns": True,
    "noPropertyAccessFromIndexSignature": True,
    "verbatimModuleSyntax": True,
}
BASE = {
    "module": "nodenext",
    "moduleResolution": "nodenext",
    "target": "es2022",
    "skipLibCheck": True,
    "types": [],
    "outDir": "out",
}


@frozen(kw_only=True)
class Corner:
    """A nested object."""

    x: int = field(metadata=doc("Column.", minimum=0, maximum=27))
    side: Literal["left", "right"] = "left"


@frozen(kw_only=True)
class Kinds:
    """Every kind of field schema_gen maps, beyond those the events use today."""

    type: Literal["digits.test.kinds.v1"] = "digits.test.kinds.v1"
    counts: list[int] = field(metadata=doc("A list."))
    corners: tuple[Corner, ...] = field(metadata=doc("Nested objects."))
    choice: int | str = field(metadata=doc("A union; the bound is for the integer.", minimum=1))
    ratio: float | None = field(metadata=doc("Nullable.", exclusive_minimum=0, maximum=1))
    level: Literal["low", "high"] = field(metadata=doc("An enum."))
    code: str = field(metadata=doc("Pattern and length.", pattern=r"^[a-z]+$", max_length=3))
    flag: bool = True


KINDS_FILE = "digits.test.kinds.v1.json"
KINDS_SCHEMA: dict[str, JSON] = {"$schema": DIALECT, "title": "kinds", **object_schema(Kinds)}


def _sample_value(tp: object, d: Doc | None) -> object:
    """A value inside the field's documented limits, from its type alone."""
    low = d.minimum if d and d.minimum is not None else None
    high = d.maximum if d and d.maximum is not None else None
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:  # X | None
        return _sample_value(args[0], d)
    if tp is bool:
        return False  # flags like will_retry and cancelled: the plain case
    if tp is int:
        return int(high if low is None and high is not None else (low or 0) + 1)
    if tp is float:
        return (low + high) / 2 if low is not None and high is not None else 0.25
    if tp is str:
        return "text"
    raise TypeError(f"no sample for {tp!r}; extend _sample_value")


COMMON: dict[str, object] = {
    "request_id": "req-1",
    "user_id": SNOWFLAKE,
    "model_id": "mnist_digitnet_v1",
    "run_id": "run-1",
    "ts": TS,
}


def sample(cls: type[TrainEvent], **overrides: object) -> TrainEvent:
    """An event of any class, every field filled within its limits, so new events are covered."""
    hints = typing.get_type_hints(cls)
    values = {
        a.name: COMMON[a.name] if a.name in COMMON else _sample_value(hints[a.name], field_doc(a))
        for a in attrs.fields(cls)
        if a.name != "type"
    }
    return cls(**{**values, **overrides})  # type: ignore[arg-type]


def published_events() -> Iterator[tuple[str, TrainEvent]]:
    for kind, cls in EVENT_CLASSES.items():
        yield kind, sample(cls)
    yield "completed-unmeasured", sample(TrainCompleted, test_acc=None, version=None, run_id=None)
    yield "completed-measured", sample(TrainCompleted, test_acc=0.987, version="v3", user_id=0)
    yield "failed-final", sample(TrainFailed, will_retry=False, error_kind="user")
    yield "failed-retrying", sample(TrainFailed, will_retry=True, attempt=2)


def describe(event: TrainEvent) -> str:
    """What check.ts's `describe` says, to prove node saw each event as its own type."""
    if isinstance(event, TrainBatch):
        return f"batch {event.batch}/{event.total_batches}"
    if isinstance(event, TrainEpoch):
        return f"epoch {event.epoch}/{event.total_epochs}"
    if isinstance(event, TrainUpload):
        return f"upload {event.status}"
    if isinstance(event, TrainCompleted):
        return f"completed {event.version or 'none'}"
    if isinstance(event, TrainFailed):
        return f"failed {event.error_kind}"
    return event.type


def _published(kind: str) -> dict[str, JSON]:
    document: dict[str, JSON] = json.loads(encode_event(sample(EVENT_CLASSES[kind]))["event"])
    return document


EPOCH = _published("digits.train.epoch.v1")
FAILED = _published("digits.train.failed.v1")


def _without(document: Mapping[str, object], *names: str) -> dict[str, object]:
    return {k: v for k, v in document.items() if k not in names}


# (name, document, zod's verdict): Python decides nothing here, the nesting is checked below.
EVENT_VARIANTS: list[tuple[str, object, bool]] = [
    ("unknown field ignored", {**EPOCH, "future_field": 1}, True),
    ("defaults filled", _without(FAILED, "attempt", "will_retry", "run_id"), True),
    ("unknown type", {**EPOCH, "type": "digits.train.nope.v1"}, False),
    ("no type", _without(EPOCH, "type"), False),
    ("missing field", _without(EPOCH, "model_id"), False),
    ("epoch 0", {**EPOCH, "epoch": 0}, False),
    ("epoch 1.5", {**EPOCH, "epoch": 1.5}, False),
    ("epoch as text (Python reads it, the contract does not)", {**EPOCH, "epoch": "3"}, False),
    ("val_acc above 1", {**EPOCH, "val_acc": 1.5}, False),
    ("user_id below 0", {**EPOCH, "user_id": -1}, False),
    ("ts not UTC ISO", {**EPOCH, "ts": "2025-01-31 12:00:00"}, False),
    ("model_id null", {**EPOCH, "model_id": None}, False),
    ("run_id a number", {**EPOCH, "run_id": 5}, False),
    ("error_kind unknown", {**FAILED, "error_kind": "other"}, False),
    ("status out of range", {**_published("digits.train.upload.v1"), "status": 600}, False),
    ("not an object", [EPOCH], False),
]

JOB = converter.unstructure(TrainJob(request_id="r-1", model_id="m", epochs=3, augment=False))
JOB_VARIANTS: list[tuple[str, object, bool]] = [
    ("every field", JOB, True),
    ("only model_id", {"model_id": "mnist_digitnet_v1"}, True),
    ("1000 characters outside the BMP", {"model_id": "m", "notes": "\U0001f600" * 1000}, True),
    ("1001 characters", {"model_id": "m", "notes": "\U0001f600" * 1001}, False),
    ("a typo (jobs are strict)", {"model_id": "m", "epoch": 1}, False),
    ("epochs 0", {"model_id": "m", "epochs": 0}, False),
    ("epochs 501", {"model_id": "m", "epochs": 501}, False),
    ("lr 0", {"model_id": "m", "lr": 0}, False),
    ("seed 2**32", {"model_id": "m", "seed": 2**32}, False),
    ("batch_size 1.5", {"model_id": "m", "batch_size": 1.5}, False),
    ("model_id with a blank", {"model_id": "bad id"}, False),
    ("a v2 job", {"model_id": "m", "type": "digits.train.v2"}, False),
    ("no model_id", {"epochs": 1}, False),
]

JOB_FIELDS = job_to_fields(TrainJob(request_id="r", model_id="m", lr=1e-5))
FIELDS_VARIANTS: list[tuple[str, object, bool]] = [
    ("as the API writes it", JOB_FIELDS, True),
    ("the README example", {"model_id": "mnist_digitnet_v1", "epochs": "1"}, True),
    ("augment YES", {"model_id": "m", "augment": "YES"}, True),
    ("a typo", {"model_id": "m", "epoch": "1"}, False),
    ("epochs abc", {"model_id": "m", "epochs": "abc"}, False),
    ("augment maybe", {"model_id": "m", "augment": "maybe"}, False),
    ("a number, not text", {"model_id": "m", "epochs": 1}, False),
]

LETTER = dead_letter_to_fields(
    dead_letter({"epochs": "x"}, entry_id="1-0", reason="r @ $.epochs", deliveries=1, ts=TS)
)
DEAD_VARIANTS: list[tuple[str, object, bool]] = [
    ("as the worker writes it", LETTER, True),
    ("deliveries abc", {**LETTER, "deliveries": "abc"}, False),
    ("no reason", _without(LETTER, "reason"), False),
]

KINDS = converter.unstructure(
    Kinds(counts=[1, 2], corners=(Corner(x=3),), choice=2, ratio=None, level="high", code="ab")
)
KINDS_VARIANTS: list[tuple[str, object, bool]] = [
    ("every kind", KINDS, True),
    ("a union's other type", {**KINDS, "choice": "two", "ratio": 1}, True),
    ("the bound beside anyOf", {**KINDS, "choice": 0}, False),
    ("a nested bound", {**KINDS, "corners": [{"x": 28, "side": "left"}]}, False),
    ("a nested enum", {**KINDS, "corners": [{"x": 1, "side": "up"}]}, False),
    ("an item's type", {**KINDS, "counts": [1.5]}, False),
    ("exclusive minimum", {**KINDS, "ratio": 0}, False),
    ("enum", {**KINDS, "level": "mid"}, False),
    ("max length", {**KINDS, "code": "abcd"}, False),
    ("pattern", {**KINDS, "code": "AB"}, False),
]


def python_event(document: object) -> JSON | None:
    try:
        event = decode_event({"event": json.dumps(document)})
    except ContractError:
        return None
    result: JSON = converter.unstructure(event)
    return result


def python_job(document: object) -> JSON | None:
    try:
        job = job_from_json(document, default_request_id="api-1")
    except ContractError:
        return None
    result: dict[str, JSON] = converter.unstructure(job)
    if isinstance(document, dict) and "request_id" not in document:
        del result["request_id"]  # the API makes one; zod leaves it out
    return result


def _as_js(value: JSON) -> JSON:
    """Numbers as JavaScript holds them (doubles), so a rounded id compares equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_as_js(v) for v in value]
    return {k: _as_js(v) for k, v in value.items()}


def readme_example() -> str:
    """streams/README.md's TypeScript example, compiled too so that it stays true."""
    text = (STREAMS_DIR / "README.md").read_text()
    code = text.split("## TypeScript", 1)[1].split("```ts\n", 1)[1].split("```", 1)[0]
    stubs = (
        "declare function readEntry(stream: string): Promise<Record<string, string>>;\n"
        "declare function show(text: string): void;\n"
        "declare function finish(requestId: string): void;\n"
    )
    return stubs + code.replace("./streams/typescript/", "./contracts/")


def compile_project(project: Path, node_modules: Path) -> None:
    """The committed files, a synthetic message of every kind, check.ts and the README's example,
    type-checked under `--strict` and under the strictest flags, then emitted as JavaScript."""
    (project / "node_modules").symlink_to(node_modules, target_is_directory=True)
    (project / "package.json").write_text('{"type": "module", "private": true}')
    shutil.copytree(STREAMS_DIR / TS_DIR, project / "contracts")
    (project / "synthetic").mkdir()
    for path, text in render({**schema_files(), KINDS_FILE: KINDS_SCHEMA}).items():
        (project / "synthetic" / Path(path).name).write_text(text)
    (project / "check.ts").write_text(CHECK_TS)
    (project / "readme.ts").write_text(readme_example())
    (project / "run.mjs").write_text(RUN_MJS)
    files = ["contracts/*.ts", "synthetic/*.ts", "check.ts", "readme.ts"]
    for name, options in [("plain", {"strict": True}), ("strictest", STRICTEST)]:
        config = {"compilerOptions": {**BASE, **options}, "include": files}
        (project / f"tsconfig.{name}.json").write_text(json.dumps(config))
    tsc = [_tool("node"), str(node_modules / "typescript" / "bin" / "tsc")]
    for command in [
        [*tsc, "--noEmit", "--strict", "-p", "tsconfig.plain.json"],
        [*tsc, "--noEmit", "-p", "tsconfig.strictest.json"],
        [*tsc, "--noCheck", "-p", "tsconfig.plain.json"],  # emit only: checked just above
    ]:
        done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command[2:])}:\n{done.stdout}{done.stderr}"


def all_cases() -> list[dict[str, object]]:
    """Every published event as an entry, then each family's variants, then broken entries."""
    cases: list[dict[str, object]] = [
        {"id": f"entry {name}", "schema": "entry", "input": encode_event(event)}
        for name, event in published_events()
    ]
    families = [
        ("TrainEventSchema", EVENT_VARIANTS),
        ("TrainJobSchema", JOB_VARIANTS),
        ("TrainJobFieldsSchema", FIELDS_VARIANTS),
        ("DeadLetterFieldsSchema", DEAD_VARIANTS),
        ("DigitsTestKindsV1Schema", KINDS_VARIANTS),
    ]
    for schema, variants in families:
        cases += [{"id": f"{schema} {n}", "schema": schema, "input": d} for n, d, _ in variants]
    mismatched = {**encode_event(sample(TrainCompleted)), "type": "digits.train.failed.v1"}
    return [
        *cases,
        {"id": "entry type differs", "schema": "entry", "input": mismatched},
        {"id": "entry without event", "schema": "entry", "input": {"type": "x"}},
    ]


@pytest.fixture(scope="module")
def node_results(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, JSON]:
    """Node's verdict and output for every case, by id."""
    project = tmp_path_factory.mktemp("ts")
    compile_project(project, node_modules)
    (project / "cases.json").write_text(json.dumps(all_cases()))
    done = subprocess.run(
        [_tool("node"), "run.mjs", "cases.json", "results.json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, JSON]] = json.loads((project / "results.json").read_text())
    return {str(r["id"]): r for r in results}


def _result(results: dict[str, JSON], case: str) -> dict[str, JSON]:
    found = results[case]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize("name", [name for name, _ in published_events()])
def test_every_published_event_parses_as_its_own_type(
    node_results: dict[str, JSON], name: str
) -> None:
    event = dict(published_events())[name]
    entry = encode_event(event)
    result = _result(node_results, f"entry {name}")
    assert result["ok"] is True, result
    assert _as_js(result["output"]) == _as_js(json.loads(entry["event"]))
    assert result["final"] is is_final(event)
    assert result["summary"] == describe(decode_event(entry))


def test_entry_checks_refuse_a_mismatched_or_empty_entry(node_results: dict[str, JSON]) -> None:
    assert "differs" in str(_result(node_results, "entry type differs")["error"])
    assert "'event' field" in str(_result(node_results, "entry without event")["error"])


@pytest.mark.parametrize(
    ("schema", "variants", "python", "json_file"),
    [
        ("TrainEventSchema", EVENT_VARIANTS, python_event, None),
        ("TrainJobSchema", JOB_VARIANTS, python_job, "digits.train.v1.json"),
    ],
    ids=["events", "job"],
)
def test_zod_sits_between_the_json_schema_and_the_python_reader(
    node_results: dict[str, JSON],
    schema: str,
    variants: list[tuple[str, object, bool]],
    python: Callable[[object], JSON | None],
    json_file: str | None,
) -> None:
    for name, document, expected in variants:
        result = _result(node_results, f"{schema} {name}")
        assert result["ok"] is expected, (name, result)
        kind = document.get("type") if isinstance(document, dict) else None
        file = json_file or f"{kind}.json"
        if file in schema_files() and Draft202012Validator(schema_files()[file]).is_valid(document):
            assert result["ok"], f"{name}: the JSON Schema accepts it, zod must"
        if result["ok"]:
            python_output = python(document)
            assert python_output is not None, f"{name}: zod accepts what Python refuses"
            assert _as_js(result["output"]) == _as_js(python_output), name


@pytest.mark.parametrize(
    ("schema", "variants", "json_file"),
    [
        ("TrainJobFieldsSchema", FIELDS_VARIANTS, "digits.train.v1.fields.json"),
        ("DeadLetterFieldsSchema", DEAD_VARIANTS, "digits.train.dead.fields.json"),
        ("DigitsTestKindsV1Schema", KINDS_VARIANTS, KINDS_FILE),
    ],
    ids=["job-fields", "dead-letter", "every-kind"],
)
def test_zod_says_what_the_json_schema_says(
    node_results: dict[str, JSON],
    schema: str,
    variants: list[tuple[str, object, bool]],
    json_file: str,
) -> None:
    validator = Draft202012Validator({**schema_files(), KINDS_FILE: KINDS_SCHEMA}[json_file])
    for name, document, expected in variants:
        result = _result(node_results, f"{schema} {name}")
        assert result["ok"] is expected, (name, result)
        assert validator.is_valid(document) is expected, name


def test_flat_forms_as_python_writes_them_are_what_python_reads() -> None:
    # The accepted flat documents above are real: Python reads them back.
    assert job_from_fields(JOB_FIELDS, entry_id="1-0").lr == 1e-5
    assert dead_letter_from_fields(LETTER).deliveries == 1
