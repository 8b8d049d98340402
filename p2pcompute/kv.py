"""A small cluster-wide key-value store for libraries, kept in the replicated metadata table.

Writes and `linearizable=True` reads go through the table's leader; other reads may be served from the local
peer's cache, which sees this process's own writes and never goes back in time. Values are plain data:
None, bool, int, float, str, bytes, and lists, tuples and dicts of these. It is meant for small
coordination data (addresses, configuration, barriers), not for bulk data: use `put` for that.
"""

from __future__ import annotations

import builtins
from typing import Any

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.state import runtime

_PLAIN = (type(None), bool, int, float, str, bytes)


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"a key must be a non-empty string, not {key!r}")
    return key


def _check_value(value: Any, path: str = "value") -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (builtins.list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f"{path}[{i}]")
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"{path} has a non-string key {k!r}; kv values are plain data")
            _check_value(v, f"{path}[{k!r}]")
        return value
    raise InvalidArgumentError(f"{path} is a {type(value).__name__}; kv values are plain data (None, bool, int, "
                               f"float, str, bytes, and lists/dicts of these) — store big objects with put()")


def put(key: str, value: Any) -> int:
    """Set `key`; returns the new version (a number that grows with every write to the table)."""
    return runtime().table(("put", _check_key(key), _check_value(value)))


def get(key: str, default: Any = None, *, linearizable: bool = False) -> Any:
    record = runtime().table(("get", _check_key(key)), linearizable=linearizable)
    return default if record is None else record[0]


def get_with_version(key: str, *, linearizable: bool = True) -> tuple[Any, int] | None:
    """`(value, version)`, or None if the key is absent."""
    record = runtime().table(("get", _check_key(key)), linearizable=linearizable)
    return None if record is None else (record[0], record[1])


def delete(key: str) -> bool:
    """Remove `key`; returns whether it existed."""
    return runtime().table(("delete", _check_key(key)))


def list(prefix: str = "", *, linearizable: bool = False) -> dict[str, Any]:  # noqa: A001 - Ray-like name
    """Every key starting with `prefix`, with its value."""
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"prefix must be a string, not {prefix!r}")
    return {k: v for k, v, _version in runtime().table(("list", prefix), linearizable=linearizable)}


def cas(key: str, expected: Any, new: Any) -> bool:
    """Compare-and-set: set `key` to `new` only if its value is `expected` (None: only if absent; `new=None`
    deletes). Returns whether it was set. Exactly one of several racing callers wins."""
    ok, _record = runtime().table(("cas", _check_key(key), _check_value(expected), _check_value(new)))
    return bool(ok)
