"""The program's one cattrs converter: strict, so a typo or a wrong type is an error, not a default.

Values arrive as strings from the environment and from `redis-cli XADD` flat fields, and as JSON
values from HTTP; the hooks accept both spellings of a value but never guess (no `int(1.5)`,
no `bool("false")`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypeVar

from cattrs import transform_error
from cattrs.errors import BaseValidationError
from cattrs.preconf.json import make_converter

converter = make_converter(forbid_extra_keys=True)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: object) -> bool:
    """`true/false/1/0/yes/no/on/off`, any case; anything else is an error, never a guess."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return True
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def _to_int(value: object, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-").removeprefix("+")
        # ASCII only: `'²'.isdigit()` and `'١٢'.isdigit()` are true; a guess is not a parse.
        if digits.isascii() and digits.isdecimal() and len(digits) <= 4000:
            return int(text)
    raise ValueError(f"expected an integer, got {value!r}")


def _to_float(value: object, _: type) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite number, got {value!r}")
    return result


def _to_str(value: object, _: type) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def _to_path(value: object, _: type) -> Path:
    if isinstance(value, str | Path) and str(value):
        return Path(value)
    raise ValueError(f"expected a path, got {value!r}")


converter.register_structure_hook(bool, lambda v, _: parse_bool(v))
converter.register_structure_hook(int, _to_int)
converter.register_structure_hook(float, _to_float)
converter.register_structure_hook(str, _to_str)
converter.register_structure_hook(Path, _to_path)
converter.register_unstructure_hook(Path, str)

T = TypeVar("T")


class ContractError(ValueError):
    """A value that does not fit its contract; `errors` are readable `reason @ $.path` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def structure(data: object, cls: type[T]) -> T:
    """Structure `data` into `cls`, raising `ContractError` with readable messages."""
    try:
        return converter.structure(data, cls)
    except BaseValidationError as exc:
        raise ContractError(transform_error(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ContractError([f"{exc} @ $"]) from None
