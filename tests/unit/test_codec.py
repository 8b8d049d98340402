"""The wire codec: every message round-trips, and no input makes decode raise anything but RemoteProtocolError."""

import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import p2pcompute.lease.messages  # noqa: F401 - registers message types
import p2pcompute.ownership.messages  # noqa: F401
import p2pcompute.runtime.messages  # noqa: F401
from p2pcompute.errors import LocalProtocolError, RemoteProtocolError
from p2pcompute.net import codec
from p2pcompute.net.messages import FIELD_TYPES, PROTOCOL_VERSION, REGISTRY


def _sample(accepted: tuple) -> object:
    for t, value in ((str, "x"), (int, 7), (bytes, b"\x00\x01"), (dict, {"a": 1}), (list, [1, "b"]),
                     (float, 1.5), (bool, True), (tuple, (1, 2)), (type(None), None)):
        if t in accepted:
            return value
    raise AssertionError(accepted)


@pytest.mark.parametrize("code", sorted(REGISTRY))
def test_every_message_round_trips(code):
    cls = REGISTRY[code]
    values = [_sample(accepted) for _, accepted in FIELD_TYPES[cls]]
    msg = cls(*values)
    assert codec.decode(codec.encode(msg)) == msg


def test_unregistered_objects_cannot_be_encoded():
    @dataclasses.dataclass
    class NotAMessage:
        x: int

    with pytest.raises(LocalProtocolError):
        codec.encode(NotAMessage(1))


def test_wrong_version_is_rejected_with_a_clear_reason():
    frame = bytearray(codec.encode(p2pcompute.runtime.messages.Unregister("p1")))
    frame[0] = PROTOCOL_VERSION + 1
    with pytest.raises(RemoteProtocolError, match="protocol version"):
        codec.decode(bytes(frame))


def test_a_frame_carrying_a_global_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    # A classic pickle exploit: os.system(...) on load. The codec must never call it.
    payload = pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (open, (str(marker), "w"))})(), 5)
    frame = codec._HEADER.pack(PROTOCOL_VERSION, p2pcompute.runtime.messages.Unregister.TYPE) + payload
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        codec.decode(frame)
    assert not marker.exists()


def test_field_types_are_checked():
    frame = codec._HEADER.pack(PROTOCOL_VERSION, p2pcompute.runtime.messages.Unregister.TYPE) + pickle.dumps((42,), 5)
    with pytest.raises(RemoteProtocolError, match="proc_id"):
        codec.decode(frame)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_remote_protocol_error(data):
    try:
        codec.decode(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(REGISTRY)), st.binary(max_size=256), st.integers(0, 64))
def test_corrupted_and_truncated_frames_only_raise_remote_protocol_error(code, noise, cut):
    cls = REGISTRY[code]
    good = codec.encode(cls(*[_sample(a) for _, a in FIELD_TYPES[cls]]))
    for frame in (good[:cut], good[:cut] + noise, good[:3] + noise):
        try:
            codec.decode(frame)
        except RemoteProtocolError:
            pass


def test_a_message_over_the_frame_limit_is_refused_at_the_sender_saying_what_to_do():
    from p2pcompute.net.codec import MAX_MESSAGE_BYTES, MessageTooLargeError
    from p2pcompute.table.messages import ClientRequest
    big = ClientRequest(client_id="c", request_id=1, acked_below=1, op=("put", "k", b"x" * MAX_MESSAGE_BYTES),
                        reply_to="tcp://c")
    with pytest.raises(MessageTooLargeError, match=r"ClientRequest is 64\.0 MiB, over the 64 MiB message limit"):
        codec.encode(big)
    assert isinstance(MessageTooLargeError("x"), ValueError)  # callers that log ValueError keep working
