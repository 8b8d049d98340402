"""Values between owner and worker: typed records survive the wire, and anything else is the sender's fault."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import pytest

from p2pcompute.errors import RemoteProtocolError
from p2pcompute.net import codec
from p2pcompute.ownership import task_messages as tm
from p2pcompute.ownership.wire_values import (ErrorResult, InlineResult, InlineSlot, StoredResult, StoredSlot,
                                              contained_of, is_error, result_from_wire, result_to_wire,
                                              results_from_wire, slot_from_wire, slot_to_wire)

text = st.text(max_size=12)
refs = st.lists(st.tuples(text, text).map(list), max_size=3)
results = st.one_of(
    st.builds(InlineResult, st.binary(max_size=32), refs),
    st.builds(StoredResult, st.integers(0, 1 << 40), refs, text, text, text),
    st.builds(ErrorResult, st.binary(max_size=32), st.lists(text, max_size=3)))
slots = st.one_of(
    st.builds(InlineSlot, st.binary(max_size=32)),
    st.builds(StoredSlot, text, st.integers(0, 1 << 40), st.lists(st.tuples(text, text, text).map(list),
                                                                  max_size=3), text))


@given(st.lists(results, max_size=4))
def test_results_come_back_equal_through_a_real_reply_frame(values):
    reply = tm.TaskReply("t1", [result_to_wire(r) for r in values], 5, "w1", "P1", None)
    back = codec.decode(codec.encode(reply))
    assert results_from_wire(back.returns) == values
    assert [is_error(e) for e in back.returns] == [type(r) is ErrorResult for r in values]
    assert [contained_of(r) for r in values] == [[] if type(r) is ErrorResult else r.contained for r in values]


@given(slots)
def test_slots_come_back_equal(slot):
    assert slot_from_wire(slot_to_wire(slot)) == slot


plain = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.binary(max_size=8), text,
                               st.sampled_from(["inline", "stored", "error"])),
                     lambda inner: st.lists(inner, max_size=7), max_leaves=20)


@given(plain)
def test_any_plain_data_is_a_record_or_a_protocol_error(entry):
    for parse in (result_from_wire, slot_from_wire):
        try:
            record = parse(entry)
        except RemoteProtocolError:
            continue
        assert type(record) in (InlineResult, StoredResult, ErrorResult, InlineSlot, StoredSlot)


@pytest.mark.parametrize("entry", [["inline", b"x"], ["stored", 1, [], "p", "h"], ["error", "text", []],
                                   ["inline", b"x", [["only-id"]]], ["stored", "1", [], "p", "h", "a"], []])
def test_a_wrong_layout_names_the_fault(entry):
    with pytest.raises(RemoteProtocolError, match="malformed task result from a worker"):
        result_from_wire(entry)
