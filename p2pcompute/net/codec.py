"""Bytes <-> messages.

A frame is a 3-byte header — protocol version (u8) and type code (u16, big endian) — followed by a pickle of
the tuple of field values. Decoding uses an unpickler that refuses every global, so a frame can rebuild only
plain data (no classes, no functions, no code): the worst a hostile frame can do is be rejected.

`decode` returns a message or raises `RemoteProtocolError`; it never raises anything else (tests fuzz it).

Size. A frame over `MAX_MESSAGE_BYTES` would be refused by every receiver (libzmq drops it and the
connection), and nobody would tell the sender: `encode` refuses it at the sender instead, with
`MessageTooLargeError` saying which message, how big, and what to do.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
from typing import Any

from p2pcompute.errors import LocalProtocolError, RemoteProtocolError
from p2pcompute.net.messages import BLOBS, FIELD_TYPES, GETTERS, PROTOCOL_VERSION, REGISTRY

_HEADER = struct.Struct(">BH")
HEADER_SIZE = _HEADER.size
MAX_MESSAGE_BYTES = 64 << 20  # every receiver refuses larger frames (Transport's max_message_bytes)


class MessageTooLargeError(LocalProtocolError, ValueError):
    """A message too big for one frame: the sender must send its payload another way (the object store)."""


# What to do about a message that is too big, for the messages that carry user data.
_TOO_LARGE_HINTS = {
    "PushTask": "the task's function or actor class (with what it captures: globals, closures, default "
                "arguments) or its inline arguments are too big. Pass large data as an argument or as a ref "
                "from put() instead of capturing it; arguments over 100 KiB go through the object store",
    "CreateDetached": "the detached actor's class and constructor arguments are too big: create it with "
                      "small arguments and pass large data to a method as a ref from put()",
    "TableOp": "table values are meant to be small: store large data with put() and keep its ref elsewhere",
}


def _check_size(msg: Any, size: int) -> None:
    if size > MAX_MESSAGE_BYTES:
        name = type(msg).__name__
        hint = _TOO_LARGE_HINTS.get(name, "send large values through the object store (put() and pass the ref)")
        raise MessageTooLargeError(f"{name} is {size / (1 << 20):.1f} MiB, over the {MAX_MESSAGE_BYTES >> 20} "
                                   f"MiB message limit: {hint}")


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
    data = header + _dumps(getter(msg), protocol=5)
    if len(data) > MAX_MESSAGE_BYTES:
        _check_size(msg, len(data))
    return data


def encode_frames(msg: Any) -> list:
    """Like `encode`, as a list of frames: a message with a blob field sends it as a second, raw frame."""
    index = BLOBS.get(type(msg))
    if index is None:
        return [encode(msg)]
    values = list(GETTERS[type(msg)](msg))
    blob = values[index]
    values[index] = None
    header = _HEADERS.get(msg.TYPE) or _HEADER.pack(PROTOCOL_VERSION, msg.TYPE)
    body = header + _dumps(tuple(values), protocol=5)
    _check_size(msg, max(len(body), len(blob)))
    return [body, blob]


def decode(frame) -> Any:
    """A message from one frame, or from [body, blob] for a message with a blob field."""
    if type(frame) is list:
        try:
            return _decode_with_blob(frame)
        except RemoteProtocolError:
            raise
        except Exception as exc:
            raise RemoteProtocolError(f"undecodable frames ({type(exc).__name__}: {exc})") from None
    try:
        return _decode(frame)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # any other failure is still the sender's fault, never ours
        raise RemoteProtocolError(f"undecodable frame ({type(exc).__name__}: {exc})") from None


def _decode_with_blob(frames: list) -> Any:
    if len(frames) != 2:
        raise RemoteProtocolError(f"a message arrived in {len(frames)} frames; at most 2 are allowed")
    body, blob = frames
    if len(body) < HEADER_SIZE:
        raise RemoteProtocolError("frame shorter than the header")
    _version, code = _HEADER.unpack_from(body)
    cls = REGISTRY.get(code)
    index = BLOBS.get(cls) if cls is not None else None
    if index is None:
        raise RemoteProtocolError(f"message type {code} does not carry a second frame")
    msg = _decode(body, blob_index=index)
    return dataclasses.replace(msg, **{FIELD_TYPES[cls][index][0]: blob})


def _decode(frame: bytes | memoryview, blob_index: int | None = None) -> Any:
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
    for i, (value, (name, accepted)) in enumerate(zip(values, spec)):
        if i == blob_index:
            if value is not None:
                raise RemoteProtocolError(f"{cls.__name__}.{name} must travel in its own frame")
            continue
        if type(value) not in accepted and (not isinstance(value, accepted) or type(value) is bool):
            raise RemoteProtocolError(f"{cls.__name__}.{name}: {type(value).__name__} is not allowed")
    if BLOBS.get(cls) is not None and blob_index is None and values[BLOBS[cls]] is None:
        raise RemoteProtocolError(f"{cls.__name__} arrived without its data frame")
    return cls(*values)
