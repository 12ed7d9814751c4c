"""Client JSON, read strictly: every hostile document is a `JsonBodyError`, never a 500.

`json.loads` alone lets a client reach a 500 or store a document other readers cannot parse:
a 5,000-digit integer raises `ValueError` (Python's int-string limit), deep nesting raises
`RecursionError`, invalid UTF-8 raises `UnicodeDecodeError`, `NaN`/`Infinity` (not JSON) and
`1e999` become non-finite floats, `"\\ud800"` becomes a lone surrogate that no UTF-8 encoder
(Redis, the log, the response) accepts, and a repeated key silently keeps its last value.
`parse_json` refuses each of them with one readable reason; callers map it to their 4xx code.
"""

from __future__ import annotations

import json
import math
import re
import sys

MAX_DEPTH = 64  # far above any document we read (jobs are flat, manifests two levels deep)
MAX_MESSAGE_CHARS = 2000
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class JsonBodyError(ValueError):
    """Why a client document is refused, as a readable reason (no traceback, no huge echo)."""


def clip(text: str, limit: int = 300) -> str:
    """At most `limit` characters: the head and the tail kept, the middle elided."""
    if len(text) <= limit:
        return text
    keep = max(limit - 5, 2)
    return f"{text[: keep // 2]} ... {text[len(text) - (keep - keep // 2) :]}"


def safe_text(text: str) -> str:
    """Text that every UTF-8 encoder accepts: lone surrogates escaped as `\\udXXX`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonBodyError(f"duplicate key {clip(safe_text(repr(key)), 80)}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> float:
    raise JsonBodyError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonBodyError(f"the number {clip(text, 40)} is out of range")
    return value


def _check_tree(value: object) -> None:
    """No nesting deeper than MAX_DEPTH and no lone surrogate in any key or string; iterative."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise JsonBodyError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise JsonBodyError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)


def parse_json(raw: bytes | str) -> object:
    """The document in `raw` (UTF-8, or UTF-16/32 as `json.loads` detects); `JsonBodyError`."""
    try:
        value: object = json.loads(
            raw,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except JsonBodyError:
        raise
    except RecursionError:
        raise JsonBodyError(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise JsonBodyError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise JsonBodyError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            digits = sys.get_int_max_str_digits()
            raise JsonBodyError(f"a number has more than {digits} digits") from None
        raise JsonBodyError(clip(safe_text(str(exc)))) from None
    _check_tree(value)
    return value
