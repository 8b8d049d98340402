"""Same machine is confirmed, not guessed: a sender uses a receiver's Unix socket only after reading the
receiver's nonce back through the socket's path; otherwise (another host that shares the machine id, as
containers from one image can) it uses TCP."""

from __future__ import annotations

import time

import pytest

from p2pcompute.net import transport as tp
from p2pcompute.net.transport import Context, Transport, route


def _parts(address: str) -> dict:
    return dict(part.split("=", 1) if "=" in part else (part.split("://")[0], part) for part in address.split())


@pytest.fixture
def pair(tmp_path):
    ctx = Context()
    receiver = Transport(ctx, "rx", "p", ipc_path=str(tmp_path / "rx"), tcp_host="127.0.0.1")
    sender = Transport(ctx, "tx", "d", ipc_path=str(tmp_path / "tx"))
    yield receiver, sender
    sender.close()
    receiver.close()
    ctx.close()


def test_an_address_with_a_readable_nonce_routes_over_the_unix_socket(pair, tmp_path):
    receiver, _ = pair
    parts = _parts(receiver.address)
    assert len(parts["nonce"]) == 16 and (tmp_path / "rx.nonce").read_text() == parts["nonce"]
    assert route(receiver.address) == parts["ipc"]


def test_a_same_machine_id_with_another_nonce_or_none_at_that_path_routes_over_tcp(pair, tmp_path):
    receiver, _ = pair
    parts = _parts(receiver.address)
    # A peer on another host: same machine id and same socket path (one image), its own nonce.
    foreign = receiver.address.replace(parts["nonce"], "0123456789abcdef")
    assert route(foreign) == parts["tcp"]
    elsewhere = receiver.address.replace(str(tmp_path / "rx"), str(tmp_path / "missing"))
    assert route(elsewhere) == parts["tcp"]
    # Without TCP there is nothing better than the socket; old addresses without a nonce keep working.
    assert route(f"{parts['ipc']} machine={parts['machine']} nonce=ffff").startswith("ipc://")
    assert route(f"{parts['tcp']} {parts['ipc']} machine={parts['machine']}") == parts["ipc"]


def test_a_message_to_an_unconfirmed_address_arrives_over_tcp(pair):
    receiver, sender = pair
    parts = _parts(receiver.address)
    foreign = receiver.address.replace(parts["nonce"], "0123456789abcdef")
    sender.send(foreign, b"hello over tcp")
    deadline = time.monotonic() + 10
    got = []
    while not got and time.monotonic() < deadline:
        frames, _, _ = receiver.poll(100)
        got += [data for _sender, data in frames]
    assert got == [b"hello over tcp"]
    assert sender._endpoint_of[foreign] == parts["tcp"]


def test_the_nonce_file_goes_with_the_transport(tmp_path):
    ctx = Context()
    t = Transport(ctx, "x", "d", ipc_path=str(tmp_path / "x"))
    assert (tmp_path / "x.nonce").exists()
    t.close()
    ctx.close()
    assert not (tmp_path / "x.nonce").exists()
    tp._confirmed.clear()
