"""Writes `streams/typescript/`: TypeScript types and zod schemas, from the JSON Schemas.

The input is what `schema_gen.schema_files()` returns, not the classes again, so the TypeScript
says exactly what the published JSON Schemas say: one source (the attrs classes), two renderings.
`types.ts` needs nothing (types, `EVENT_TYPES`, `STREAMS`, `isFinal`); `schemas.ts` needs zod 4
(one schema per message, the event union, `parseEvent`); `index.ts` exports both. `schemas.ts`
also holds a compile-time proof that each zod schema produces exactly its `types.ts` type.

Only the JSON Schema keywords `schema_gen` writes are mapped, generically (any field of those
kinds in any message); a keyword this module does not know is an error, never silently dropped.
Readers as the Python reader does: a field with a default may be missing (`.default()` fills it);
unknown event fields are ignored (zod strips them); closed schemas refuse them (`z.strictObject`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from handwriting_ai.contracts.events import EVENT_CLASSES, TrainCompleted, TrainFailed
from handwriting_ai.contracts.fields import JSON
from handwriting_ai.contracts.jobs import JOB_TYPE, DeadLetter, TrainJob
from handwriting_ai.streams.keys import DEAD_STREAM, EVENTS_STREAM, JOBS_STREAM

TS_DIR = "typescript"
# What the generated files are type-checked and run against (tests/test_typescript_contracts.py).
CHECKED_WITH = {"typescript": "5.9.3", "zod": "4.6.7"}
HEADER = (
    "// Generated from handwriting_ai.contracts by `digits schemas`: never edit by hand.\n"
    "// Regenerate with: ./dev run digits schemas   (zod 4; checked with "
    + ", ".join(f"{k} {v}" for k, v in CHECKED_WITH.items())
    + ")\n"
)
TAG = "type"
# Keywords that carry no constraint (JSDoc and defaults are rendered on their own).
_NOTES = {"$schema", "title", "description", "default"}
_KNOWN = _NOTES | {"type", "const", "enum", "anyOf", "items", "properties", "required"}
_KNOWN |= {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength"}
_KNOWN |= {"maxLength", "additionalProperties"}
_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")

Schema = Mapping[str, JSON]


def _js(value: JSON) -> str:
    """A JSON value as a TypeScript literal (JSON is a subset of JS expressions)."""
    return json.dumps(value, ensure_ascii=False)


def _key(name: str) -> str:
    return name if _IDENT.match(name) else _js(name)


def _sub(schema: Schema, key: str) -> Schema:
    value = schema[key]
    if not isinstance(value, dict):
        raise TypeError(f"expected a schema object at {key!r}, got {value!r}")
    return value


def _schemas(value: JSON) -> list[Schema]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError(f"expected a list of schemas, got {value!r}")
    return [v for v in value if isinstance(v, dict)]


def _check_keywords(schema: Schema) -> None:
    unknown = sorted(set(schema) - _KNOWN)
    if unknown:
        raise TypeError(f"no TypeScript mapping for {unknown} in {schema!r}; extend typescript_gen")


def _split_types(schema: Schema) -> list[Schema] | None:
    """`{"type": ["number", "null"], ...}` as one schema per type, each keeping the keywords."""
    kinds = schema.get("type")
    if not isinstance(kinds, list):
        return None
    return [{**schema, "type": kind} for kind in kinds]


def _doc(text: JSON, indent: str) -> str:
    if not isinstance(text, str) or not text:
        return ""
    safe = text.replace("*/", "*\\/")
    return f"{indent}/** {safe} */\n"


# --- TypeScript types -------------------------------------------------------------------------


def _ts_union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    return " | ".join(unique)


# JSON Schema's scalar types as TypeScript's.
_SCALARS = dict(string="string", integer="number", number="number", boolean="boolean", null="null")


def ts_type(schema: Schema, indent: str = "", *, as_input: bool = False) -> str:
    """The TypeScript type of values the schema accepts (`as_input`: as a sender may write it)."""
    _check_keywords(schema)
    if "const" in schema:
        return _js(schema["const"])
    if "enum" in schema:
        values = schema["enum"]
        return _ts_union([_js(v) for v in values]) if isinstance(values, list) else "never"
    options = _schemas(schema["anyOf"]) if "anyOf" in schema else _split_types(schema)
    if options is not None:
        return _ts_union([ts_type(s, indent, as_input=as_input) for s in options])
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return f"Array<{ts_type(_sub(schema, 'items'), indent, as_input=as_input)}>"
    if kind == "object":
        return ts_object(schema, indent, as_input=as_input)
    raise TypeError(f"no TypeScript type for {schema!r}")


def _optional(schema: Schema, name: str, *, as_input: bool, tag: str | None = None) -> bool:
    """Whether a property may be absent: a sender may omit a field with a default, a reader
    always gets it; the union's tag is never optional."""
    required = schema.get("required", [])
    listed = isinstance(required, list) and name in required
    prop = _sub(_sub(schema, "properties"), name)
    if name == tag:
        return False
    if as_input:
        return not listed or "default" in prop
    return not listed and "default" not in prop


def _ordered(schema: Schema) -> list[str]:
    """Property names in the classes' order, the tag first."""
    names = list(_sub(schema, "properties"))
    return sorted(names, key=lambda n: n != TAG)


def ts_object(schema: Schema, indent: str, *, as_input: bool, tag: str | None = None) -> str:
    properties = _sub(schema, "properties")
    inner = indent + "  "
    lines = []
    for name in _ordered(schema):
        prop = _sub(properties, name)
        # `?: T | undefined`, as zod types it, so it agrees under `exactOptionalPropertyTypes` too.
        optional = _optional(schema, name, as_input=as_input, tag=tag)
        value = ts_type(prop, inner, as_input=as_input)
        member = f"{_key(name)}?: {value} | undefined" if optional else f"{_key(name)}: {value}"
        lines.append(f"{_doc(prop.get('description'), inner)}{inner}{member};\n")
    return "{\n" + "".join(lines) + indent + "}"


# --- zod schemas ------------------------------------------------------------------------------

_BOUNDS = {"exclusiveMinimum": "gt", "minimum": "min", "maximum": "max", "exclusiveMaximum": "lt"}


def _length_check(schema: Schema) -> str:
    # JSON Schema (and Python's len) count code points; a JS string's length counts UTF-16 units.
    checks = []
    for key, op, words in (("minLength", ">=", "least"), ("maxLength", "<=", "most")):
        limit = schema.get(key)
        if isinstance(limit, int):
            message = f"Invalid string: expected at {words} {limit} characters"
            checks.append(
                f".refine((s) => [...s].length {op} {limit}, {{ message: {_js(message)} }})"
            )
    return "".join(checks)


def _zod_base(schema: Schema, indent: str) -> str:
    kind = schema.get("type")
    if "const" in schema:
        return f"z.literal({_js(schema['const'])})"
    if "enum" in schema:
        return f"z.enum({_js(schema['enum'])})"
    if kind == "string":
        pattern = schema.get("pattern")
        regex = f'.regex(new RegExp({_js(pattern)}, "u"))' if isinstance(pattern, str) else ""
        return f"z.string(){regex}{_length_check(schema)}"
    if kind in ("integer", "number"):
        bounds = "".join(
            f".{op}({_js(schema[key])})" for key, op in _BOUNDS.items() if key in schema
        )
        return ("integer()" if kind == "integer" else "z.number()") + bounds
    if kind in ("boolean", "null"):
        return f"z.{kind}()"
    if kind == "array":
        return f"z.array({zod_schema(_sub(schema, 'items'), indent)})"
    if kind == "object":
        return zod_object(schema, indent)
    raise TypeError(f"no zod schema for {schema!r}")


def zod_schema(schema: Schema, indent: str = "", *, keep_default: bool = True) -> str:
    """A zod expression accepting what the schema accepts (defaults filled in, like Python)."""
    _check_keywords(schema)
    split = _split_types(schema)
    if "anyOf" in schema or split is not None:
        # The keywords beside `anyOf` constrain every alternative (each applies to its own type).
        shared = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        options = [{**shared, **o} for o in _schemas(schema["anyOf"])] if split is None else split
        # Bounds and patterns say nothing about null, so `{"type": "null", ...}` is just null.
        nullable = any(o.get("type") == "null" for o in options)
        rest = [o for o in options if o.get("type") != "null"]
        parts = [zod_schema(o, indent, keep_default=False) for o in rest]
        if not parts:
            base = "z.null()"
        else:
            base = parts[0] if len(parts) == 1 else f"z.union([{', '.join(parts)}])"
            base += ".nullable()" if nullable else ""
    else:
        base = _zod_base(schema, indent)
    if keep_default and "default" in schema:
        base += f".default({_js(schema['default'])})"
    return base


def zod_object(schema: Schema, indent: str, *, tag: str | None = None) -> str:
    properties = _sub(schema, "properties")
    inner = indent + "  "
    lines = []
    for name in _ordered(schema):
        prop = _sub(properties, name)
        keep_default = name != tag
        text = zod_schema(prop, inner, keep_default=keep_default)
        if _optional(schema, name, as_input=True, tag=tag) and "default" not in prop:
            text += ".optional()"
        lines.append(f"{inner}{_key(name)}: {text},\n")
    closed = schema.get("additionalProperties") is False
    return ("z.strictObject({\n" if closed else "z.object({\n") + "".join(lines) + indent + "})"


# --- the files --------------------------------------------------------------------------------


def _pascal(stem: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", stem))


def message_names(files: Mapping[str, Schema]) -> dict[str, str]:
    """The TypeScript name of each schema file: the Python class's where there is one."""
    known = {f"{kind}.json": cls.__name__ for kind, cls in EVENT_CLASSES.items()}
    known[f"{JOB_TYPE}.json"] = TrainJob.__name__
    known[f"{JOB_TYPE}.fields.json"] = f"{TrainJob.__name__}Fields"
    known["digits.train.dead.fields.json"] = f"{DeadLetter.__name__}Fields"
    return {file: known.get(file) or _pascal(file.removesuffix(".json")) for file in files}


def _has_input_form(schema: Schema) -> bool:
    """Senders may leave some fields out (the job): the type they send differs from the parsed."""
    required = schema.get("required", [])
    return any(
        not isinstance(required, list) or name not in required
        for name in _sub(schema, "properties")
    )


def _event_files() -> list[str]:
    return [f"{kind}.json" for kind in EVENT_CLASSES]


def _events_first(files: Mapping[str, Schema]) -> list[tuple[str, Schema]]:
    events = _event_files()
    return sorted(files.items(), key=lambda item: item[0] not in events)


def _tag_of(cls: type) -> str:
    return next(kind for kind, c in EVENT_CLASSES.items() if c is cls)


def _is_final() -> str:
    """`events.is_final` in TypeScript."""
    return (
        "/** No further event follows for this job (a failure that will retry is not final). */\n"
        "export function isFinal(event: TrainEvent): boolean {\n"
        "  switch (event.type) {\n"
        f"    case {_js(_tag_of(TrainCompleted))}:\n"
        "      return true;\n"
        f"    case {_js(_tag_of(TrainFailed))}:\n"
        "      return !event.will_retry;\n"
        "    default:\n"
        "      return false;\n"
        "  }\n"
        "}\n"
    )


def render_types(files: Mapping[str, Schema]) -> str:
    names = message_names(files)
    events = _event_files()
    blocks = [HEADER]
    for file, schema in _events_first(files):
        name, tag = names[file], TAG if file in events else None
        body = ts_object(schema, "", as_input=False, tag=tag)
        blocks.append(f"{_doc(schema.get('description'), '')}export interface {name} {body}\n")
        if _has_input_form(schema):
            body = ts_object(schema, "", as_input=True, tag=tag)
            blocks.append(
                f"/** {name} as a sender writes it: fields with a default may be left out. */\n"
                f"export interface {name}Input {body}\n"
            )
    union = "".join(f"\n  | {names[f]}" for f in events)
    kinds = "".join(f"  {_js(kind)},\n" for kind in EVENT_CLASSES)
    streams = f"jobs: {_js(JOBS_STREAM)}, events: {_js(EVENTS_STREAM)}, dead: {_js(DEAD_STREAM)}"
    blocks.append(
        "/** Every training event on the events stream; `type` tells them apart. */\n"
        f"export type TrainEvent ={union};\n\n"
        'export type TrainEventType = TrainEvent["type"];\n\n'
        f"export const EVENT_TYPES = [\n{kinds}] as const;\n\n"
        f"export const JOB_TYPE = {_js(JOB_TYPE)};\n\n"
        "/** The Redis streams: XADD jobs, XREAD events, XRANGE dead letters. */\n"
        f"export const STREAMS = {{ {streams} }} as const;\n\n" + _is_final()
    )
    return "\n".join(blocks)


_SCHEMAS_PRELUDE = """import { z } from "zod";

import type * as T from "./types.js";

/** An integer as JSON Schema means one: a whole number of any size. (`z.int()` would refuse
 * ids past 2^53, which JSON.parse can only round; compare such ids as text if they matter.) */
const integer = () =>
  z.number().refine(Number.isInteger, { message: "Invalid input: expected an integer" });
"""

_SCHEMAS_HELPERS = """
/** An event document (the JSON in an entry's `event` field), checked; throws a ZodError. */
export function parseEvent(json: unknown): T.TrainEvent {
  return TrainEventSchema.parse(json);
}

/** `parseEvent` without throwing: `{ success: true, data }` or `{ success: false, error }`. */
export function safeParseEvent(json: unknown): z.ZodSafeParseResult<T.TrainEvent> {
  return TrainEventSchema.safeParse(json);
}

/** The event in a `digits:events` entry's fields (`type`, `event`), as `XREAD` returns them. */
export function parseEventEntry(fields: Readonly<Record<string, string>>): T.TrainEvent {
  const raw = fields["event"];
  if (raw === undefined) {
    throw new Error("expected an 'event' field holding the event as JSON");
  }
  const event = parseEvent(JSON.parse(raw));
  const kind = fields["type"];
  if (kind !== undefined && kind !== event.type) {
    throw new Error(`entry type ${kind} differs from the event's ${event.type}`);
  }
  return event;
}

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<Proof extends true> = Proof;
"""


def render_schemas(files: Mapping[str, Schema]) -> str:
    names = message_names(files)
    events = _event_files()
    blocks = [HEADER + _SCHEMAS_PRELUDE]
    proofs = []
    for file, schema in _events_first(files):
        name, tag = names[file], TAG if file in events else None
        blocks.append(f"export const {name}Schema = {zod_object(schema, '', tag=tag)};\n")
        proofs.append(f"z.output<typeof {name}Schema>, T.{name}")
        if _has_input_form(schema):
            proofs.append(f"z.input<typeof {name}Schema>, T.{name}Input")
    members = "".join(f"  {names[f]}Schema,\n" for f in events)
    blocks.append(
        "/** Any training event, picked by `type`; unknown fields are dropped, as Python does. */\n"
        f'export const TrainEventSchema = z.discriminatedUnion("type", [\n{members}]);\n'
    )
    proofs.append("z.output<typeof TrainEventSchema>, T.TrainEvent")
    proofs.append("(typeof T.EVENT_TYPES)[number], T.TrainEventType")
    checks = "".join(f"  Assert<Same<{p}>>,\n" for p in proofs)
    blocks.append(
        _SCHEMAS_HELPERS.lstrip("\n")
        + "\n/** Compiles only while every schema yields exactly its type in types.ts. */\n"
        + f"export type SchemasMatchTypes = [\n{checks}];\n"
    )
    return "\n".join(blocks)


def render(files: Mapping[str, Schema]) -> dict[str, str]:
    """Every TypeScript file, by path relative to `streams/`, from `schema_files()`."""
    return {
        f"{TS_DIR}/index.ts": HEADER
        + 'export * from "./types.js";\nexport * from "./schemas.js";\n',
        f"{TS_DIR}/schemas.ts": render_schemas(files),
        f"{TS_DIR}/types.ts": render_types(files),
    }
