"""Bytes <-> messages.

A frame is a 3-byte header — protocol version (u8) and type code (u16, big endian) — followed by a pickle of
the tuple of field values. Decoding uses an unpickler that refuses every global, so a frame can rebuild only
plain data (no classes, no functions, no code): the worst a hostile frame can do is be rejected.

`decode` returns a message or raises `RemoteProtocolError`; it never raises anything else (tests fuzz it).
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

from p2pcompute.errors import LocalProtocolError, RemoteProtocolError
from p2pcompute.net.messages import FIELD_TYPES, GETTERS, PROTOCOL_VERSION, REGISTRY

_HEADER = struct.Struct(">BH")
HEADER_SIZE = _HEADER.size


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a message")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a message")


_HEADERS: dict[int, bytes] = {}
_dumps = pickle.dumps


def encode(msg: Any) -> bytes:
    getter = GETTERS.get(type(msg))
    if getter is None:
        raise LocalProtocolError(f"{type(msg).__name__} is not a registered message")
    code = msg.TYPE
    header = _HEADERS.get(code)
    if header is None:
        header = _HEADERS[code] = _HEADER.pack(PROTOCOL_VERSION, code)
    return header + _dumps(getter(msg), protocol=5)


def decode(frame: bytes | memoryview) -> Any:
    try:
        return _decode(frame)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # any other failure is still the sender's fault, never ours
        raise RemoteProtocolError(f"undecodable frame ({type(exc).__name__}: {exc})") from None


def _decode(frame: bytes | memoryview) -> Any:
    if len(frame) < HEADER_SIZE:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes is shorter than the {HEADER_SIZE}-byte header")
    version, code = _HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(f"sender speaks protocol version {version}; this peer speaks {PROTOCOL_VERSION}")
    cls = REGISTRY.get(code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {code}")
    try:
        values = _PlainUnpickler(io.BytesIO(memoryview(frame)[HEADER_SIZE:])).load()
    except Exception as exc:
        raise RemoteProtocolError(f"{cls.__name__}: body does not unpickle as plain data ({exc})") from None
    spec = FIELD_TYPES[cls]
    if type(values) is not tuple or len(values) != len(spec):
        raise RemoteProtocolError(f"{cls.__name__}: expected {len(spec)} fields")
    for value, (name, accepted) in zip(values, spec):
        if type(value) not in accepted and (not isinstance(value, accepted) or type(value) is bool):
            raise RemoteProtocolError(f"{cls.__name__}.{name}: {type(value).__name__} is not allowed")
    return cls(*values)
