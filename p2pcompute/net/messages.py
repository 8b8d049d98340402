"""The message framework: frozen dataclasses with an append-only numeric type code.

Each protocol module declares its messages with `@message(code)`. Codes are allocated in blocks so that
modules never collide, and a code is never reused once released:

    1-99     membership (p2pcompute.net.membership_messages)
    100-199  leases (p2pcompute.lease.messages)
    200-299  ownership and objects (p2pcompute.ownership.messages)
    300-399  replicated table (p2pcompute.table.messages)
    400-499  runtime control: registration, workers, logs (p2pcompute.runtime.messages)
    500-599  task and actor execution (p2pcompute.runtime.messages)

Fields may hold only plain data — None, bool, int, float, str, bytes, and tuples, lists and dicts of these —
so that the decoder never needs to import or call anything to rebuild a message (see codec.py).
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from typing import Any, Callable, TypeVar

PROTOCOL_VERSION = 1

T = TypeVar("T")

# code -> class, and class -> tuple of (field name, accepted runtime types)
REGISTRY: dict[int, type] = {}
FIELD_TYPES: dict[type, tuple[tuple[str, tuple[type, ...]], ...]] = {}
# class -> function returning the tuple of its field values (attrgetter is several times faster than a loop)
GETTERS: dict[type, object] = {}
# class -> index of the bytes field that travels as a raw frame of its own (bulk data: never pickled)
BLOBS: dict[type, int] = {}

_PLAIN = (type(None), bool, int, float, str, bytes, tuple, list, dict)


def message(code: int, blob: str | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator: make `cls` a frozen message dataclass with wire type `code`.

    `blob` names a bytes field that travels as a separate frame, untouched by pickle: bulk data is then
    copied neither into nor out of the message body.
    """

    def register(cls: type[T]) -> type[T]:
        if code in REGISTRY:
            raise RuntimeError(f"message code {code} used by both {REGISTRY[code].__name__} and {cls.__name__}")
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        cls.TYPE = code  # type: ignore[attr-defined]
        REGISTRY[code] = cls
        hints = typing.get_type_hints(cls)
        FIELD_TYPES[cls] = tuple((f.name, _runtime_types(hints[f.name])) for f in dataclasses.fields(cls))
        names = [f.name for f in dataclasses.fields(cls)]
        if blob is not None:
            BLOBS[cls] = names.index(blob)
        if len(names) == 1:
            single = operator.attrgetter(names[0])
            GETTERS[cls] = lambda msg: (single(msg),)
        elif names:
            GETTERS[cls] = operator.attrgetter(*names)
        else:
            GETTERS[cls] = lambda msg: ()
        return cls

    return register


def _runtime_types(annotation: Any) -> tuple[type, ...]:
    """The isinstance() check for a field annotation: only the outer type is checked."""
    if annotation is Any:
        return _PLAIN
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            out += _runtime_types(arg)
        return out
    if origin is not None:
        annotation = origin
    if annotation is float:
        return (float, int)
    if annotation is int:
        return (int,)
    if annotation in _PLAIN:
        return (annotation,)
    raise TypeError(f"message field type {annotation!r} is not plain data")


def fields_of(msg: Any) -> tuple:
    return tuple(getattr(msg, name) for name, _ in FIELD_TYPES[type(msg)])
