"""What a message field means and allows, declared once: checked in code, published as JSON Schema.

A field's `Doc` (description, bounds, pattern) sits in its attrs metadata. `check_fields` enforces
it when an instance is built, and `schema_gen` writes the same numbers into `streams/schemas/`,
so the code and the published contract cannot disagree. `structure_readable` keeps the converter
hooks' own words (`expected an integer, got 'abc' @ $.epochs`) where cattrs' default formatter
would say only `invalid value for type, expected int`.
"""

from __future__ import annotations

import re
import typing
from typing import Literal, TypeAlias, TypeVar

import attrs
from attrs import frozen
from cattrs import transform_error
from cattrs.errors import BaseValidationError, ForbiddenExtraKeysError

from handwriting_ai.contracts.converter import ContractError, converter

JSON: TypeAlias = "str | int | float | bool | list[JSON] | dict[str, JSON] | None"
Number = int | float
T = TypeVar("T")

_DOC = "handwriting_ai.doc"


@frozen
class Doc:
    """A field's meaning and limits; `hint` says the pattern in words for error messages."""

    description: str
    minimum: Number | None = None
    exclusive_minimum: Number | None = None
    maximum: Number | None = None
    pattern: str | None = None
    hint: str = ""
    max_length: int | None = None


def doc(
    description: str,
    *,
    minimum: Number | None = None,
    exclusive_minimum: Number | None = None,
    maximum: Number | None = None,
    pattern: str | None = None,
    hint: str = "",
    max_length: int | None = None,
) -> dict[str, Doc]:
    """attrs `metadata=` for a documented field."""
    return {
        _DOC: Doc(
            description=description,
            minimum=minimum,
            exclusive_minimum=exclusive_minimum,
            maximum=maximum,
            pattern=pattern,
            hint=hint,
            max_length=max_length,
        )
    }


def field_doc(attribute: attrs.Attribute[object]) -> Doc | None:
    found: object = attribute.metadata.get(_DOC)
    return found if isinstance(found, Doc) else None


def range_text(d: Doc) -> str | None:
    """`1 to 500`, `more than 0 and at most 1`, `at least 0`; None when the field is unbounded."""
    if d.minimum is not None and d.maximum is not None:
        return f"{d.minimum} to {d.maximum}"
    parts = []
    if d.minimum is not None:
        parts.append(f"at least {d.minimum}")
    if d.exclusive_minimum is not None:
        parts.append(f"more than {d.exclusive_minimum}")
    if d.maximum is not None:
        parts.append(f"at most {d.maximum}")
    return " and ".join(parts) or None


def _in_range(value: Number, d: Doc) -> bool:
    return not (
        (d.minimum is not None and value < d.minimum)
        or (d.exclusive_minimum is not None and value <= d.exclusive_minimum)
        or (d.maximum is not None and value > d.maximum)
    )


def _shown(value: object) -> str:
    """`repr`, cut short: a 10 kB bad value must not flood a dead-letter reason or a log line."""
    if isinstance(value, str) and len(value) > 64:
        return f"{value[:64]!r}... ({len(value)} characters)"
    return repr(value)


def _field_errors(name: str, value: object, d: Doc) -> list[str]:
    where = f"@ $.{name}"
    if isinstance(value, int | float) and not isinstance(value, bool) and not _in_range(value, d):
        return [f"expected {range_text(d)}, got {_shown(value)} {where}"]
    if isinstance(value, str):
        if d.pattern is not None and re.fullmatch(d.pattern, value) is None:
            wanted = d.hint or f"a value matching {d.pattern}"
            return [f"expected {wanted}, got {_shown(value)} {where}"]
        if d.max_length is not None and len(value) > d.max_length:
            return [f"expected at most {d.max_length} characters, got {len(value)} {where}"]
    return []


def check_fields(instance: attrs.AttrsInstance) -> list[str]:
    """Every documented limit the instance breaks, as `reason @ $.field`; empty when it fits."""
    errors: list[str] = []
    for attribute in attrs.fields(type(instance)):
        d = field_doc(attribute)
        if d is not None:
            value: object = getattr(instance, attribute.name)
            errors.extend(_field_errors(attribute.name, value, d))
    return errors


def raise_on_bad_fields(instance: attrs.AttrsInstance) -> None:
    """For `__attrs_post_init__`: an instance that breaks its documented limits never exists."""
    errors = check_fields(instance)
    if errors:
        raise ContractError(errors)


def _reason(exc: BaseException, tp: type | None) -> str:
    """The converter hooks already say what they expected and got; keep their words."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown fields ({', '.join(sorted(exc.extra_fields))})"
    if typing.get_origin(tp) is Literal:
        return "expected " + " or ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return f"invalid value ({exc})"


def structure_readable(data: object, cls: type[T]) -> T:
    """`converter.structure`, raising `ContractError` in the hooks' own `reason @ $.path` words."""
    try:
        return converter.structure(data, cls)
    except BaseValidationError as exc:
        # A limit broken in `__attrs_post_init__` reaches us wrapped, already in our words.
        inner = exc.exceptions
        if len(inner) == 1 and isinstance(inner[0], ContractError):
            raise ContractError(inner[0].errors) from None
        raise ContractError(transform_error(exc, format_exception=_reason)) from None
    except ContractError:
        raise
    except (ValueError, TypeError) as exc:
        raise ContractError([f"{exc} @ $"]) from None


def flat_value(value: object) -> str:
    """One field as `redis-cli` would type it; the converter hooks read each form back exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that parses back to the same float
    return str(value)


def to_fields(instance: attrs.AttrsInstance) -> dict[str, str]:
    """A flat message as stream entry fields: every field present, every value a string."""
    return {
        attribute.name: flat_value(getattr(instance, attribute.name))
        for attribute in attrs.fields(type(instance))
    }
