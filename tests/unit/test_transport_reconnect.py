"""A process that appears at the address of a dead one is reachable at once, not after ZeroMQ's backoff."""

from __future__ import annotations

import socket
import time

from p2pcompute.net.transport import Context, Transport


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receive(transport: Transport, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    got: list = []
    while not got and time.monotonic() < deadline:
        frames, _, _ = transport.poll(50)
        got += [data for _sender, data in frames]
    return got


def _until(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
    return False


def test_a_connection_down_since_its_process_died_is_remade_for_the_next_one_at_that_address():
    ctx = Context()
    port = _free_port()
    sender = Transport(ctx, "tx", "d")
    first = Transport(ctx, "rx1", "p", tcp_host="127.0.0.1", tcp_port=port)
    address = first.address
    try:
        sender.send(address, b"to the first")
        assert _receive(first, 10) == [b"to the first"]
        # Connected: nothing to redo.
        assert _until(lambda: (sender.poll(10), not sender.reconnect_now(address))[1], 5)
        first.close()
        # The first process is gone: the connection goes down (its monitor tells the sender).
        assert _until(lambda: (sender.poll(10), bool(sender.reconnect_now(address)))[1], 10)
        second = Transport(ctx, "rx2", "p", tcp_host="127.0.0.1", tcp_port=port)
        try:
            sender.send(address, b"to the second")
            assert _receive(second, 2) == [b"to the second"]
        finally:
            second.close()
    finally:
        sender.close()
        ctx.close()
