"""Turning user values into bytes and back.

- Values are pickled with protocol 5 and out-of-band buffers (cloudpickle underneath, so lambdas, closures
  and classes defined in `__main__` travel by value). A numpy array's data is never copied into the pickle
  stream: it stays a separate buffer, written once into the store and mapped, not copied, when read.
- A serialized value is one *blob*: a small header, the pickle stream, then each buffer aligned to 64 bytes.
  The same layout is used inline (inside a message) and in a shared-memory file.
- Refs met while pickling are recorded so the runtime can register the receiver as a borrower.
- An exception from user code becomes a `TaskError` that is also an instance of the original type.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from p2pcompute.errors import SerializationError, TaskError, make_task_error

ALIGN = 64
_MAGIC = b"P2PB"
_HEAD = struct.Struct("<4sIQ")  # magic, buffer count, pickle-stream length
_LEN = struct.Struct("<Q")

_context = threading.local()


@dataclass
class Serialized:
    """A value ready to be sent or stored. `refs` are (object_id, owner_addr) pairs found inside it."""

    meta: bytes
    buffers: list = field(default_factory=list)
    refs: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        if not self.buffers:
            return _HEAD.size + len(self.meta)
        return blob_size(len(self.meta), [memoryview(b).nbytes for b in self.buffers])

    def to_blob(self) -> bytes:
        if not self.buffers:  # the common small value: one concatenation, no scratch buffer
            return _HEAD.pack(_MAGIC, 0, len(self.meta)) + self.meta
        out = bytearray(self.nbytes)
        write_blob(out, self.meta, self.buffers)
        return bytes(out)

    def blob_parts(self) -> list:
        """The blob as a list of byte strings and buffers, for vectored writes (no joining copy)."""
        lens = [memoryview(b).nbytes for b in self.buffers]
        parts: list = [_header(len(self.meta), lens), self.meta]
        pos = _header_size(len(lens)) + len(self.meta)
        for buf, n in zip(self.buffers, lens):
            pad = -pos % ALIGN
            if pad:
                parts.append(b"\0" * pad)
            parts.append(buf)  # PickleBuffer.raw() views are already flat bytes
            pos += pad + n
        return parts


class ArgSlot:
    """Placeholder for a top-level ref argument inside a pickled argument tuple; the worker fills it in."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (ArgSlot, (self.index,))


def record_ref(object_id: str, owner_addr: str) -> None:
    """Called by ObjectRef.__reduce__: note that the value being pickled holds this ref."""
    refs = getattr(_context, "refs", None)
    if refs is not None:
        refs.append((object_id, owner_addr))


_SIMPLE = (int, float, str, bool, type(None))


def _simple(value: Any, depth: int = 0) -> bool:
    """Plain builtin data that pickle by value with the C pickler exactly as cloudpickle would, faster."""
    t = type(value)
    if t in _SIMPLE or (t is bytes and len(value) < 4096):
        return True
    # Loops, not all() over generators: this runs on every call's arguments.
    if depth < 3 and (t is tuple or t is list) and len(value) <= 32:
        for v in value:
            if type(v) not in _SIMPLE and not _simple(v, depth + 1):
                return False
        return True
    if depth < 3 and t is dict and len(value) <= 32:
        for k, v in value.items():
            if type(k) is not str or (type(v) not in _SIMPLE and not _simple(v, depth + 1)):
                return False
        return True
    return False


def serialize(value: Any, *, out_of_band: bool = True) -> Serialized:
    if _simple(value):
        return Serialized(pickle.dumps(value, protocol=5))
    buffers: list = []
    previous = getattr(_context, "refs", None)
    _context.refs = []
    try:
        stream = io.BytesIO()
        pickler = cloudpickle.CloudPickler(stream, protocol=5,
                                           buffer_callback=buffers.append if out_of_band else None)
        pickler.dump(value)
        meta = stream.getvalue()
        refs = _dedupe(_context.refs)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(value)}: {type(exc).__name__}: {exc}") from exc
    finally:
        _context.refs = previous
    return Serialized(meta, [buf.raw() for buf in buffers], refs)


def _dedupe(pairs: list) -> list:
    if len(pairs) < 2:
        return pairs
    seen: dict = {}
    for pair in pairs:
        seen.setdefault(pair[0], pair)
    return list(seen.values())


def _describe(value: Any) -> str:
    text = repr(value) if not isinstance(value, (bytes, bytearray, memoryview)) else f"<{len(value)} bytes>"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def deserialize(blob: bytes | memoryview, *, writable: bool = False) -> Any:
    """Rebuild a value from a blob. With `writable`, buffers are copied so arrays can be modified."""
    meta, buffers = read_blob(blob)
    if writable and buffers:
        buffers = [bytearray(b) for b in buffers]
    return pickle.loads(meta, buffers=buffers)


# ---- blob layout ----------------------------------------------------------------------------------------


def _header_size(nbuf: int) -> int:
    return _HEAD.size + _LEN.size * nbuf


def _header(meta_len: int, lens: list[int]) -> bytes:
    return _HEAD.pack(_MAGIC, len(lens), meta_len) + b"".join(_LEN.pack(n) for n in lens)


def blob_size(meta_len: int, lens: list[int]) -> int:
    pos = _header_size(len(lens)) + meta_len
    for n in lens:
        pos += -pos % ALIGN + n
    return pos


def write_blob(out: bytearray | memoryview, meta: bytes, buffers: list) -> None:
    lens = [memoryview(b).nbytes for b in buffers]
    view = memoryview(out)
    head = _header(len(meta), lens)
    view[: len(head)] = head
    pos = len(head)
    view[pos: pos + len(meta)] = meta
    pos += len(meta)
    for buf, n in zip(buffers, lens):
        pos += -pos % ALIGN
        view[pos: pos + n] = memoryview(buf).cast("B")
        pos += n


def read_blob(blob: bytes | memoryview) -> tuple[memoryview, list[memoryview]]:
    view = memoryview(blob)
    if len(view) < _HEAD.size:
        raise SerializationError(f"object data is truncated ({len(view)} bytes)")
    magic, nbuf, meta_len = _HEAD.unpack_from(view)
    if magic != _MAGIC:
        raise SerializationError("object data is corrupt (bad magic)")
    pos = _HEAD.size
    lens = [_LEN.unpack_from(view, pos + 8 * i)[0] for i in range(nbuf)]
    pos += 8 * nbuf
    meta = view[pos: pos + meta_len]
    pos += meta_len
    buffers = []
    for n in lens:
        pos += -pos % ALIGN
        buffers.append(view[pos: pos + n])
        pos += n
    if pos > len(view):
        raise SerializationError("object data is truncated")
    return meta, buffers


# ---- functions and classes ------------------------------------------------------------------------------


def dumps_code(obj: Any) -> tuple[str, bytes]:
    """Pickle a function or class by value if needed; returns (content id, bytes)."""
    try:
        data = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {getattr(obj, '__qualname__', obj)!r} to send it to workers: "
                                 f"{type(exc).__name__}: {exc}") from exc
    return hashlib.blake2b(data, digest_size=12).hexdigest(), data


def loads_code(data: bytes) -> Any:
    return pickle.loads(data)


# ---- errors ---------------------------------------------------------------------------------------------


def serialize_error(exc: BaseException, *, function_name: str, pid: int, node_id: str,
                    tb: str | None = None) -> bytes:
    """Pack an exception raised by user code, keeping its type when it can be pickled."""
    if isinstance(exc, TaskError):
        # An error from a nested task passes through unchanged, keeping its innermost traceback.
        cause, remote_tb = exc.cause, exc.remote_traceback
    else:
        cause = exc
        remote_tb = tb if tb is not None else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    kind = type(cause).__name__ if cause is not None else "an error"
    message = f"{function_name} failed in process {pid} on peer {node_id[:12]} with {kind}:\n{remote_tb.rstrip()}"
    try:
        cause_bytes = cloudpickle.dumps(cause, protocol=5)
        pickle.loads(cause_bytes)  # will the caller be able to rebuild it? Some exceptions are not.
    except Exception:
        cause_bytes = b""
    return b"U" + pickle.dumps((message, cause_bytes, remote_tb, function_name, pid, node_id), protocol=5)


def system_error_bytes(exc: BaseException) -> bytes:
    """Pack one of our own errors (WorkerCrashedError, TaskCancelledError, ...) to raise at `get`."""
    return b"S" + pickle.dumps(exc, protocol=5)


def error_from_bytes(data: bytes) -> BaseException:
    tag, body = data[:1], data[1:]
    if tag == b"S":
        return pickle.loads(body)
    message, cause_bytes, remote_tb, function_name, pid, node_id = pickle.loads(body)
    cause = None
    if cause_bytes:
        try:
            cause = pickle.loads(cause_bytes)
        except Exception:
            cause = None
    return make_task_error(message, cause=cause, remote_traceback=remote_tb, function_name=function_name,
                           pid=pid, node_id=node_id)


def exception_type_names(exc: BaseException) -> list[str]:
    """`module.qualname` of the exception's type and its bases, so owners can match `retry_exceptions`."""
    if isinstance(exc, TaskError) and exc.cause is not None:
        exc = exc.cause
    return [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]
