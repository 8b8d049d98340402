"""Values on the wire between an owner and a worker: a task's results, and its ready ref arguments.

Two messages carry values: `TaskReply.returns` (one result per return id, worker -> owner) and
`PushTask.slots` (one per top-level ref argument, owner -> worker). The codec rebuilds only plain data, so
on the wire each value is a plain list; this module is the only place that knows those lists' layout. Code
on either side builds and reads the typed records below, and `*_from_wire` checks the shape and types of
what arrived: a malformed entry is a `RemoteProtocolError` (the sender's fault), which fails its task
with that error instead of raising somewhere deep in the owner or the worker.

Wire layouts (the first element names the kind):
- result: `["inline", blob, contained]` | `["stored", size, contained, store_path, holder_id, holder_addr]`
  | `["error", error_blob, exception_type_names]`
- slot: `["inline", blob]` | `["stored", object_id, size, locations, owner_addr]`
`contained` lists the refs inside the value as `[object_id, owner_addr]` pairs; `locations` lists copies as
`[peer_id, peer_addr, store_path]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute.errors import RemoteProtocolError


# ---- results (TaskReply.returns) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InlineResult:
    """A small result, carried in the reply itself."""

    blob: bytes
    contained: list  # refs inside the value: [[object_id, owner_addr], ...]


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A large result, written to the store of the worker's peer."""

    size: int
    contained: list
    store_path: str
    holder_id: str    # the peer whose store holds it
    holder_addr: str


@dataclass(frozen=True, slots=True)
class ErrorResult:
    """The task raised: the serialized error, and the exception's type names (for `retry_exceptions`)."""

    error: bytes
    exception_names: list


Result = InlineResult | StoredResult | ErrorResult


def result_to_wire(result: Result) -> list:
    t = type(result)
    if t is InlineResult:
        return ["inline", result.blob, result.contained]
    if t is StoredResult:
        return ["stored", result.size, result.contained, result.store_path, result.holder_id, result.holder_addr]
    return ["error", result.error, result.exception_names]


def result_from_wire(entry) -> Result:
    """One entry of `TaskReply.returns`; raises `RemoteProtocolError` if it is not one of the layouts above."""
    if type(entry) is list and entry:
        kind, n = entry[0], len(entry)
        if kind == "inline" and n == 3 and isinstance(entry[1], bytes) and _refs(entry[2]):
            return InlineResult(entry[1], entry[2])
        if (kind == "stored" and n == 6 and _count(entry[1]) and _refs(entry[2])
                and all(isinstance(x, str) for x in entry[3:])):
            return StoredResult(entry[1], entry[2], entry[3], entry[4], entry[5])
        if kind == "error" and n == 3 and isinstance(entry[1], bytes) and _strings(entry[2]):
            return ErrorResult(entry[1], entry[2])
    raise RemoteProtocolError(f"malformed task result from a worker: {_describe(entry)}")


def is_error(entry) -> bool:
    """Whether a result in its wire layout is an error, without checking the rest (for observability)."""
    return type(entry) is list and bool(entry) and entry[0] == "error"


def contained_of(result: Result) -> list:
    """The refs inside a result's value (none for an error)."""
    return [] if type(result) is ErrorResult else result.contained


def results_from_wire(returns) -> list[Result]:
    if type(returns) is not list:
        raise RemoteProtocolError(f"malformed task results from a worker: {_describe(returns)}")
    return [result_from_wire(entry) for entry in returns]


# ---- ref arguments (PushTask.slots) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InlineSlot:
    """A small ready argument, carried in the push itself."""

    blob: bytes


@dataclass(frozen=True, slots=True)
class StoredSlot:
    """A large ready argument: where its copies are, for the worker to map or fetch."""

    object_id: str
    size: int
    locations: list  # [[peer_id, peer_addr, store_path], ...]
    owner_addr: str


Slot = InlineSlot | StoredSlot


def slot_to_wire(slot: Slot) -> list:
    if type(slot) is InlineSlot:
        return ["inline", slot.blob]
    return ["stored", slot.object_id, slot.size, slot.locations, slot.owner_addr]


def slot_from_wire(entry) -> Slot:
    """One entry of `PushTask.slots`; raises `RemoteProtocolError` if it is not one of the layouts above."""
    if type(entry) is list and entry:
        kind, n = entry[0], len(entry)
        if kind == "inline" and n == 2 and isinstance(entry[1], bytes):
            return InlineSlot(entry[1])
        if (kind == "stored" and n == 5 and isinstance(entry[1], str) and _count(entry[2])
                and _locations(entry[3]) and isinstance(entry[4], str)):
            return StoredSlot(entry[1], entry[2], entry[3], entry[4])
    raise RemoteProtocolError(f"malformed task argument from an owner: {_describe(entry)}")


# ---- checks ----------------------------------------------------------------------------------------------


def _count(x) -> bool:
    return type(x) is int and x >= 0


def _strings(x) -> bool:
    return type(x) is list and all(isinstance(s, str) for s in x)


def _refs(x) -> bool:
    return type(x) is list and all(type(r) in (list, tuple) and len(r) == 2 and isinstance(r[0], str)
                                   and isinstance(r[1], str) for r in x)


def _locations(x) -> bool:
    return type(x) is list and all(type(loc) in (list, tuple) and len(loc) == 3
                                   and all(isinstance(s, str) for s in loc) for loc in x)


def _describe(x) -> str:
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."
