"""Batching in the transport, with real ZeroMQ sockets over IPC: order, size limits, and malformed batches."""

import os
import tempfile
import time

import pytest

from p2pcompute.net import transport as tp


@pytest.fixture
def pair():
    ctx = tp.Context()
    d = tempfile.mkdtemp(prefix="p2p-t-")
    a = tp.Transport(ctx, "pa-d1", "io", ipc_path=os.path.join(d, "a"))
    b = tp.Transport(ctx, "pb-d1", "io", ipc_path=os.path.join(d, "b"))
    yield a, b
    ctx.close()


def receive(t, n, deadline_s=5.0):
    got = []
    end = time.monotonic() + deadline_s
    while len(got) < n and time.monotonic() < end:
        frames, _, _ = t.poll(50)
        got += frames
    return got


def test_held_messages_arrive_in_order_with_big_and_bulk_ones_between(pair):
    a, b = pair
    big = b"B" * (tp.BATCH_ITEM_MAX + 1)
    a.hold()
    for i in range(10):
        a.send(b.address, b"m%d" % i)
    a.send(b.address, big)  # too big to hold: what was held for b goes first
    for i in range(10, 300):  # more than BATCH_MAX: a full batch goes on its own
        a.send(b.address, b"m%d" % i)
    a.send_frames(b.address, [b"head", b"bulk"])
    a.send(b.address, b"last")
    assert a.holding() == 1
    a.flush()
    assert a.holding() == 0
    received = receive(b, 10 + 1 + 290 + 1 + 1)
    assert {sender for sender, _ in received} == {"pa-d1"}  # each message of a batch keeps its sender
    got = [data for _, data in received]
    expected = [b"m%d" % i for i in range(10)] + [big] + [b"m%d" % i for i in range(10, 300)]
    assert got[:301] == expected
    assert [bytes(x) for x in got[301]] == [b"head", b"bulk"]
    assert got[302] == b"last"


@pytest.mark.parametrize("frame", [
    tp._BATCH_HEADER + b"\x00\x00\x00\x05abc",       # a length beyond the frame
    tp._BATCH_HEADER + b"\x00\x00",                  # a truncated length
    tp._BATCH_HEADER + b"\x00\x00\x00\x00",          # an empty message
    tp._BATCH_HEADER + b"\x00\x00\x00\x01x",         # a batch of one: never sent, so not accepted
])
def test_a_malformed_batch_is_dropped_whole_and_the_receiver_goes_on(pair, frame):
    a, b = pair
    a.send(b.address, frame)
    a.send(b.address, b"after")
    got = [data for _, data in receive(b, 1)]
    assert got == [b"after"]
    assert b.rejected_frames == 1


def test_split_batch_roundtrip():
    items = [b"x", b"yy" * 100, b"\xffB"]
    frame = tp._BATCH_HEADER + b"".join(tp._LEN.pack(len(i)) + i for i in items)
    assert tp.split_batch(frame) == items
