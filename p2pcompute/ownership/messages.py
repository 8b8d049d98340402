"""Messages about objects: borrowing, reading and freeing. Type codes 200-299, append-only."""

from __future__ import annotations

from p2pcompute.net.messages import message


@message(200)
class AddBorrower:
    """Forwarder -> owner: process `borrower_id` was sent a ref to `object_id` by `forwarder_id`; ack to
    `reply_to`."""

    object_id: str
    borrower_id: str
    reply_to: str
    forwarder_id: str


@message(201)
class BorrowerAdded:
    """Owner -> forwarder: the registration is recorded; the forwarder may drop its pin."""

    object_id: str


@message(202)
class RemoveBorrower:
    """Borrower -> owner: hand back `count` registrations; the borrower no longer reaches the object."""

    object_id: str
    count: int


@message(203)
class GetObject:
    """Reader -> owner: tell me when `object_id` is ready, and how to read it."""

    object_id: str
    reply_to: str


@message(204)
class ObjectStatus:
    """Owner -> reader: the object is ready (`data` inline, or stored at `locations`) or failed (`error`).

    `contained` lists refs inside the value as (object_id, owner_addr); the owner registered the reader as
    their borrower before replying.
    """

    object_id: str
    state: str            # "inline" | "stored" | "error" | "lost" | "freed"
    data: bytes | None
    locations: list       # [[peer_id, peer_addr, size], ...]
    contained: list
    error: bytes | None


@message(205)
class FreeObjects:
    """Owner -> holder peer: these objects are unreachable; delete your copies."""

    object_ids: list


@message(206)
class ObjectSealed:
    """Writer -> its peer: a new object is complete in the local store."""

    object_id: str
    size: int
    owner_addr: str


@message(207)
class FetchObject:
    """Client -> its local peer: make a local copy of `object_id`, held by the peer at `holder_addr`."""

    request_id: str
    object_id: str
    size: int
    holder_addr: str
    owner_addr: str
    reply_to: str


@message(208)
class ObjectFetched:
    """Peer -> client: the object is in the local store at `store_path` (or `error` says why not)."""

    request_id: str
    object_id: str
    store_path: str
    error: str | None


@message(209)
class PullObject:
    """Fetching peer -> holder peer: send bytes [offset, offset + length) of `object_id`."""

    object_id: str
    offset: int
    length: int
    reply_to: str


@message(210, blob="data")
class ObjectChunk:
    object_id: str
    offset: int
    total: int
    data: bytes
    error: str | None


@message(211)
class AddLocation:
    """Peer -> owner: a copy of `object_id` now also lives on this peer; free it there too."""

    object_id: str
    peer_id: str
    peer_addr: str
    store_path: str


@message(212)
class BorrowConfirmed:
    """Receiver -> owner: a ref to `object_id` reached me from `forwarder_id`, a borrower. The owner counts
    the registration once, from this or the forwarder's `AddBorrower`, whichever comes first."""

    object_id: str
    forwarder_id: str
