"""Writes `streams/`: a JSON Schema per message and an AsyncAPI 3.0 document, from attrs classes.

The classes in `jobs.py` and `events.py` are the source of truth; the files are generated, never
edited, and a test fails when they drift. The mapper below knows the few types messages use
(str, int, float, bool, Literal, `X | None`, lists, nested attrs classes) and refuses others, so
an unsupported field fails loudly here instead of being published wrong. `typescript_gen` renders
the same schemas as TypeScript types and zod schemas (`streams/typescript/`); `main` writes and
checks both.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from handwriting_ai.contracts import typescript_gen
from handwriting_ai.contracts.asyncapi_gen import asyncapi_document
from handwriting_ai.contracts.events import EVENT_CLASSES
from handwriting_ai.contracts.feedback import FEEDBACK_TYPE, Correction
from handwriting_ai.contracts.fields import JSON, Doc, field_doc, flat_value, range_text
from handwriting_ai.contracts.jobs import JOB_TYPE, DeadLetter, TrainJob
from handwriting_ai.streams.keys import DEAD_STREAM, FEEDBACK_STREAM, JOBS_STREAM

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_DIR = "schemas"

# What the converter hooks read from a string, in the canonical spelling (no surrounding blanks).
INT_PATTERN = r"^[+-]?[0-9]+$"
FLOAT_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
BOOL_WORDS = ("true", "false", "1", "0", "yes", "no", "on", "off")


def _any_case(word: str) -> str:
    # JSON Schema regexes (ECMA-262) have no inline ignore-case flag.
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


BOOL_PATTERN = "^(" + "|".join(_any_case(w) for w in BOOL_WORDS) + ")$"


def type_schema(tp: object) -> dict[str, JSON]:
    """The JSON Schema of one Python type as a JSON value."""
    scalar = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if isinstance(tp, type) and tp in scalar:
        return {"type": scalar[tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal and all(isinstance(a, str) for a in args):
        values: list[JSON] = [str(a) for a in args]
        return (
            {"type": "string", "const": values[0]}
            if len(values) == 1
            else {
                "type": "string",
                "enum": values,
            }
        )
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if nullable and len(options) == 1 and set(options[0]) == {"type"}:
            only = options[0]
            return {**only, "type": [only["type"], "null"]}
        alternatives: list[JSON] = [*options]
        if nullable:
            alternatives.append({"type": "null"})
        return {"anyOf": alternatives}
    if (origin is list and len(args) == 1) or (origin is tuple and args[1:] == (Ellipsis,)):
        return {"type": "array", "items": type_schema(args[0])}
    if isinstance(tp, type) and attrs.has(tp):
        return object_schema(tp)
    raise TypeError(f"no JSON Schema mapping for {tp!r}; extend schema_gen.type_schema")


def _doc_keywords(d: Doc | None) -> dict[str, JSON]:
    if d is None:
        return {}
    found: dict[str, JSON] = {
        "description": d.description,
        "minimum": d.minimum,
        "exclusiveMinimum": d.exclusive_minimum,
        "maximum": d.maximum,
        "pattern": d.pattern,
        "maxLength": d.max_length,
    }
    return {k: v for k, v in found.items() if v is not None}


def _json_default(value: object) -> JSON:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"default {value!r} has no JSON form")


def object_schema(
    cls: type[attrs.AttrsInstance],
    *,
    all_required: bool = True,
    optional: Sequence[str] = (),
    closed: bool = False,
) -> dict[str, JSON]:
    """An object with one property per attrs field, each with its `Doc` keywords and default."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, JSON] = {}
    required: list[JSON] = []
    for a in attrs.fields(cls):
        name: str = a.name
        prop = {**type_schema(hints[name]), **_doc_keywords(field_doc(a))}
        has_default = a.default is not attrs.NOTHING
        if has_default:
            prop["default"] = _json_default(a.default)
        properties[name] = prop
        if (all_required or not has_default) and name not in optional:
            required.append(name)
    schema: dict[str, JSON] = {"type": "object", "properties": properties, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _flat_property(tp: object, d: Doc | None) -> dict[str, JSON]:
    """A field as a stream entry carries it: always a string, shaped by the type it parses into."""
    base = type_schema(tp)
    if base.get("type") == "string":
        return {**base, **_doc_keywords(d)}
    words = {
        "integer": (INT_PATTERN, "Integer"),
        "number": (FLOAT_PATTERN, "Number"),
        "boolean": (BOOL_PATTERN, "Boolean (true/false, 1/0, yes/no, on/off, any case)"),
    }
    kind = base.get("type")
    if not isinstance(kind, str) or kind not in words:
        raise TypeError(f"no flat string form for {tp!r}")
    pattern, what = words[kind]
    limits = range_text(d) if d is not None else None
    text = f"{what} as text" + (f", {limits}" if limits else "") + "."
    description = f"{d.description} {text}" if d is not None else text
    return {"type": "string", "pattern": pattern, "description": description}


def flat_schema(cls: type[attrs.AttrsInstance], *, optional: Sequence[str] = ()) -> dict[str, JSON]:
    """The schema of a class sent as flat string fields (`XADD key * name value ...`)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, JSON] = {}
    required: list[JSON] = []
    for a in attrs.fields(cls):
        name: str = a.name
        prop = _flat_property(hints[name], field_doc(a))
        if a.default is not attrs.NOTHING:
            prop["default"] = flat_value(a.default)
        elif name not in optional:
            required.append(name)
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": required}


def _document(title: str, description: str, body: dict[str, JSON]) -> dict[str, JSON]:
    return {"$schema": DIALECT, "title": title, "description": description, **body}


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip()


def schema_files() -> dict[str, dict[str, JSON]]:
    """Each message's schema by file name: the job in both forms, each event, dead letters."""
    job = _summary(TrainJob)
    files: dict[str, dict[str, JSON]] = {
        f"{JOB_TYPE}.json": _document(
            JOB_TYPE,
            f"{job} JSON form: the body of POST /v1/train. Without request_id the API makes one.",
            object_schema(TrainJob, all_required=False, optional=["request_id"], closed=True),
        ),
        f"{JOB_TYPE}.fields.json": _document(
            JOB_TYPE,
            f"{job} Flat form: the fields of an entry on {JOBS_STREAM}, every value a string. "
            "Without request_id it is job-<entry id>. Unknown fields are refused.",
            {**flat_schema(TrainJob, optional=["request_id"]), "additionalProperties": False},
        ),
        f"{FEEDBACK_TYPE}.fields.json": _document(
            FEEDBACK_TYPE,
            f"{_summary(Correction)} Flat form: the fields of an entry on {FEEDBACK_STREAM},"
            " every value a string.",
            flat_schema(Correction),
        ),
        "digits.train.dead.fields.json": _document(
            "digits.train.dead",
            f"{_summary(DeadLetter)} Flat form: the fields of an entry on {DEAD_STREAM}.",
            flat_schema(DeadLetter),
        ),
    }
    for kind, cls in EVENT_CLASSES.items():
        files[f"{kind}.json"] = _document(
            kind,
            f"{_summary(cls)} Every field is always present; readers ignore unknown fields.",
            object_schema(cls),
        )
    return files


def _dump(document: JSON) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """Every generated file, by path relative to `streams/`; same input, same bytes."""
    rendered = {f"{SCHEMAS_DIR}/{name}": _dump(s) for name, s in schema_files().items()}
    rendered["asyncapi.json"] = _dump(asyncapi_document(SCHEMAS_DIR))
    return dict(sorted(rendered.items()))


# A family of generated files: what renders them, and the folder and glob of their leftovers.
Family = tuple[dict[str, str], str, str]


def _families() -> list[Family]:
    return [
        (render_all(), SCHEMAS_DIR, "*.json"),
        (typescript_gen.render(schema_files()), typescript_gen.TS_DIR, "*.ts"),
    ]


def _stale(root: Path, rendered: dict[str, str], folder: str, glob: str) -> list[str]:
    """Generated-looking files nothing renders any more (a removed message type)."""
    found = sorted(p.relative_to(root).as_posix() for p in (root / folder).glob(glob))
    return [path for path in found if path not in rendered]


def _drift(root: Path, rendered: dict[str, str], folder: str, glob: str) -> list[str]:
    changed = [
        path
        for path, text in rendered.items()
        if not (root / path).is_file() or (root / path).read_text() != text
    ]
    return sorted(changed + _stale(root, rendered, folder, glob))


def drifted(root: Path) -> list[str]:
    """JSON files under `root` that differ from `render_all()`, are missing, or are stale."""
    return _drift(root, render_all(), SCHEMAS_DIR, "*.json")


def drifted_all(root: Path) -> list[str]:
    """`drifted`, and the same for the TypeScript files."""
    return sorted(path for family in _families() for path in _drift(root, *family))


def _write(root: Path, rendered: dict[str, str], folder: str, glob: str) -> list[Path]:
    for path in _stale(root, rendered, folder, glob):
        (root / path).unlink()
    written = []
    for path, text in rendered.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    return written


def write_all(root: Path) -> list[Path]:
    """Write every JSON file under `root` (and remove stale schemas); returns the paths written."""
    return _write(root, render_all(), SCHEMAS_DIR, "*.json")


def main(argv: Sequence[str] | None = None) -> int:
    """`digits schemas [--check] [--dir streams]`: regenerate, or exit 1 naming drifted files."""
    parser = argparse.ArgumentParser(prog="digits schemas", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    parser.add_argument("--dir", type=Path, default=Path("streams"), help="default: streams")
    args = parser.parse_args(argv)
    root: Path = args.dir
    families = _families()
    if args.check:
        stale = drifted_all(root)
        for path in stale:
            print(f"drifted: {root / path}", file=sys.stderr)
        if stale:
            print("regenerate with: digits schemas", file=sys.stderr)
            return 1
        print(f"{root}: {sum(len(f[0]) for f in families)} files up to date")
        return 0
    written = [path for family in families for path in _write(root, *family)]
    print(f"{root}: wrote {len(written)} files")
    return 0
