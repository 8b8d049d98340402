"""The reference-counting core stepped by hand: one `ReferenceTable` per process, messages carried by the test.

Each test is a transcript of a few processes — `o` owns the objects, `b` and `c` borrow them — in the order
the runtime would call the core, with the network's reorderings spelled out. Known bugs are strict xfails
whose name and reason say what goes wrong; each is the shortest sequence found.
"""

import pytest

from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership.messages import AddBorrower, BorrowConfirmed, BorrowerAdded, RemoveBorrower
from p2pcompute.ownership.refcount import GRACE_MS, Free, ReferenceTable, owner_id_of

X = "o.1"
Y = "o.2"
T0 = 1_000_000_000            # when a death is learned
GRACE = GRACE_MS * 1_000_000  # how long a dead process's holds outlive the news


def proc(proc_id: str) -> ReferenceTable:
    return ReferenceTable(proc_id, f"addr-{proc_id}")


def addr(t: ReferenceTable) -> str:
    return t.self_addr


def only_send(effects: list):
    """The single message in `effects` (and nothing else)."""
    assert len(effects) == 1 and isinstance(effects[0], Send), effects
    return effects[0].msg


def arrive(t: ReferenceTable, oid: str, owner: ReferenceTable, keep: bool = True,
           sender: ReferenceTable | None = None) -> list:
    """A task message from `sender` (default: the owner) carrying `oid` reaches `t`; the task makes an
    ObjectRef (if `keep`) and finishes. Returns the effects of both: a receiver confirms a forwarded ref."""
    effects = t.on_received(oid, addr(owner), (sender if sender is not None else owner).self_id)
    if keep:
        t.add_local(oid, addr(owner))
    return effects + t.unpin(oid)


def lend(o: ReferenceTable, b: ReferenceTable, oid: str) -> None:
    """`o` (the owner) sends `oid` to `b`, which keeps a local ref."""
    assert o.on_sent(oid, addr(o), b.self_id) == []
    assert arrive(b, oid, o) == []


def forward(b: ReferenceTable, oid: str, dest: ReferenceTable, owner: ReferenceTable) -> AddBorrower:
    """Borrower `b` puts `oid` in a message to `dest`; returns the AddBorrower it sends the owner."""
    msg = only_send(b.on_sent(oid, addr(owner), dest.self_id))
    assert msg == AddBorrower(oid, dest.self_id, addr(b), b.self_id)
    return msg


def confirmation(effects: list, owner: ReferenceTable, oid: str, forwarder: ReferenceTable) -> BorrowConfirmed:
    """The receiver's BorrowConfirmed to the owner, first among `effects`."""
    assert effects and effects[0] == Send(addr(owner), BorrowConfirmed(oid, forwarder.self_id)), effects
    return effects[0].msg


def owned(o: ReferenceTable, oid: str = X, n: int = 1) -> ReferenceTable:
    for _ in range(n):
        o.add_local(oid, addr(o))
    return o


# ---- owner alone ------------------------------------------------------------------------------------------

def test_object_ids_name_their_owner():
    assert owner_id_of("w-3.17") == "w-3"
    assert proc("o").is_owned(X) and not proc("b").is_owned(X)


def test_owner_frees_when_the_last_local_ref_goes():
    o = owned(proc("o"), n=2)
    assert o.remove_local(X) == []
    assert o.counts(X)["local"] == 1
    assert o.remove_local(X) == [Free(X)]
    assert len(o) == 0 and o.freed_count == 1


def test_double_remove_local_is_harmless():
    o = owned(proc("o"))
    o.pin(X, addr(o))                      # e.g. a submitted task still carries it
    assert o.remove_local(X) == []
    assert o.remove_local(X) == []         # a second release must not eat the pin
    assert o.counts(X)["pins"] == 1
    assert o.unpin(X) == [Free(X)]
    assert o.remove_local(X) == [] and o.unpin(X) == []   # after the free: nothing, and no second Free
    assert o.freed_count == 1


def test_double_remove_local_by_a_borrower_sends_one_remove_borrower():
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    first = b.remove_local(X)
    assert first == [Send(addr(o), RemoveBorrower(X, 1)), Free(X)]
    assert b.remove_local(X) == [] and len(b) == 0


def test_unknown_ids_are_ignored():
    t = proc("o")
    assert t.remove_local("b.9") == [] and t.unpin("b.9") == []
    assert t.on_remove_borrower("b", RemoveBorrower("o.9", 1)) == []
    assert len(t) == 0


# ---- owner lends to a borrower ----------------------------------------------------------------------------

def test_a_ref_the_owner_sends_lives_until_the_borrowers_remove_borrower():
    o, q = owned(proc("o")), proc("q")
    assert o.on_sent(X, addr(o), "q") == []          # the owner registers q on the spot
    assert o.counts(X)["borrowers"] == {"q": 1}
    assert o.remove_local(X) == []                   # q's message is still on its way
    assert q.on_received(X, addr(o), "o") == []      # from the owner: nothing to confirm
    assert q.counts(X) == {"owned": False, "local": 0, "pins": 1, "acks": 0, "borrowers": {}, "pending": {},
                           "regs": 1, "contains": []}
    q.add_local(X, addr(o))
    assert q.unpin(X) == []
    done = q.remove_local(X)
    assert done == [Send(addr(o), RemoveBorrower(X, 1)), Free(X)]   # Free: q drops its cached copy
    assert o.on_remove_borrower("q", done[0].msg) == [Free(X)]
    assert len(o) == 0 and len(q) == 0


def test_the_message_pins_a_received_ref_until_it_is_consumed():
    o, q = owned(proc("o")), proc("q")
    o.on_sent(X, addr(o), "q")
    q.on_received(X, addr(o), "o")
    assert X in q                                    # arrived, not yet deserialized: must not be dropped
    assert q.unpin(X) == [Send(addr(o), RemoveBorrower(X, 1)), Free(X)]


def test_a_borrower_hands_back_every_registration_at_once():
    o, q = owned(proc("o")), proc("q")
    for _ in range(3):                               # three messages carry X to q before q lets any go
        o.on_sent(X, addr(o), "q")
        q.on_received(X, addr(o), "o")
    assert q.unpin(X) == [] and q.unpin(X) == []
    last = q.unpin(X)
    assert last == [Send(addr(o), RemoveBorrower(X, 3)), Free(X)]
    assert o.remove_local(X) == []
    assert o.on_remove_borrower("q", last[0].msg) == [Free(X)]


# ---- a borrower forwards ----------------------------------------------------------------------------------

def test_forwarding_pins_the_forwarders_copy_until_borrower_added():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    add = forward(b, X, c, o)
    assert b.remove_local(X) == []                   # the pin keeps b registered with the owner
    assert b.counts(X)["acks"] == 1
    assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
    assert o.counts(X)["borrowers"] == {"b": 1, "c": 1}
    assert o.counts(X)["pending"] == {("b", "c"): 1}            # tentative until c confirms it
    released = b.on_borrower_added(BorrowerAdded(X))
    assert released == [Send(addr(o), RemoveBorrower(X, 1)), Free(X)]
    assert o.on_remove_borrower("b", released[0].msg) == []      # c still borrows
    done = arrive(c, X, o, keep=False, sender=b)
    assert o.on_borrow_confirmed("c", confirmation(done, o, X, b)) == []
    assert o.counts(X)["borrowers"] == {"c": 1} and o.counts(X)["pending"] == {}   # counted once
    assert o.on_remove_borrower("c", done[1].msg) == [Free(X)]


def test_remove_borrower_overtaking_add_borrower_does_not_free_early():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    add = forward(b, X, c, o)
    assert b.remove_local(X) == []
    # c gets the ref, uses it and lets go; its RemoveBorrower reaches o before b's AddBorrower does.
    done = arrive(c, X, o, keep=False, sender=b)
    assert done == [Send(addr(o), BorrowConfirmed(X, "b")), Send(addr(o), RemoveBorrower(X, 1)), Free(X)]
    assert o.on_remove_borrower("c", done[1].msg) == []         # even before c's confirmation
    assert o.counts(X)["borrowers"] == {"b": 1, "c": -1}
    assert o.on_borrow_confirmed("c", done[0].msg) == []
    assert o.counts(X)["borrowers"] == {"b": 1} and o.counts(X)["pending"] == {("b", "c"): -1}
    assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
    assert o.counts(X)["borrowers"] == {"b": 1} and o.counts(X)["pending"] == {}
    last = b.on_borrower_added(BorrowerAdded(X))
    assert o.on_remove_borrower("b", last[0].msg) == [Free(X)]
    assert len(o) == len(b) == len(c) == 0


@pytest.mark.parametrize("add_first", [True, False], ids=["add_borrower_first", "data_first"])
def test_the_owner_receiving_its_own_ref_back(add_first):
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    assert o.remove_local(X) == []
    add = forward(b, X, o, o)                        # b passes X back to its owner
    assert b.remove_local(X) == []
    if add_first:
        assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
        released = b.on_borrower_added(BorrowerAdded(X))
        assert o.on_remove_borrower("b", released[0].msg) == []   # o's own message is still on its way
        assert o.counts(X)["borrowers"] == {"o": 1}
        assert arrive(o, X, o, keep=False, sender=b) == [Free(X)]   # the owner confirms to itself
    else:
        assert o.on_received(X, addr(o), "b") == []  # confirmed here; the message's pin takes it over
        assert o.counts(X)["borrowers"] == {"b": 1} and o.counts(X)["pending"] == {("b", "o"): -1}
        o.add_local(X, addr(o))
        assert o.unpin(X) == []
        assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
        released = b.on_borrower_added(BorrowerAdded(X))
        assert o.on_remove_borrower("b", released[0].msg) == []   # o holds an ObjectRef again
        assert o.remove_local(X) == [Free(X)]
    assert len(o) == len(b) == 0 and o.freed_count == 1


def test_add_borrower_for_an_unknown_object_is_still_acknowledged():
    o = proc("o")
    assert o.on_add_borrower(AddBorrower("o.7", "c", "addr-b", "b")) == [Send("addr-b", BorrowerAdded("o.7"))]
    assert len(o) == 0


# ---- values that hold refs --------------------------------------------------------------------------------

def test_refs_put_inside_a_value_live_as_long_as_the_value():
    o = owned(owned(proc("o"), Y), X)                # o holds X and Y, then puts [Y] as X's value
    assert o.set_contains(X, [(Y, addr(o))]) == []
    assert o.remove_local(Y) == []                   # the value still holds Y
    assert o.remove_local(X) == [Free(X), Free(Y)]
    assert len(o) == 0


def test_set_contains_for_a_value_already_gone_releases_its_refs():
    o = owned(proc("o"), Y)
    assert o.set_contains(X, [(Y, addr(o))]) == []   # Y is still held locally
    assert o.counts(Y)["pins"] == 0
    assert o.remove_local(Y) == [Free(Y)]


def test_a_reader_keeps_the_refs_in_a_value_while_it_holds_the_value():
    o, r = owned(owned(proc("o"), Y), X), proc("r")
    o.set_contains(X, [(Y, addr(o))])
    o.remove_local(Y)
    lend(o, r, X)
    # r reads X: the owner registers r for each ref inside the value, then replies with the value.
    assert o.on_sent(Y, addr(o), "r") == []
    assert r.adopt_contained(X, [(Y, addr(o))], "o") == []
    assert o.remove_local(X) == []
    assert r.counts(Y) == {"owned": False, "local": 0, "pins": 1, "acks": 0, "borrowers": {}, "pending": {},
                           "regs": 1, "contains": []}
    done = r.remove_local(X)
    assert done == [Send(addr(o), RemoveBorrower(X, 1)), Free(X), Send(addr(o), RemoveBorrower(Y, 1)), Free(Y)]
    assert o.on_remove_borrower("r", done[0].msg) == [Free(X)]   # X's value went, but r still borrowed Y
    assert o.counts(Y)["borrowers"] == {"r": 1}
    assert o.on_remove_borrower("r", done[2].msg) == [Free(Y)]
    assert len(o) == len(r) == 0


def test_a_value_arriving_after_its_ref_was_dropped_releases_its_refs_at_once():
    o, r = owned(proc("o"), Y), proc("r")
    o.on_sent(Y, addr(o), "r")
    assert r.adopt_contained(X, [(Y, addr(o))], "o") == [Send(addr(o), RemoveBorrower(Y, 1)), Free(Y)]
    assert len(r) == 0


def test_a_task_return_holding_the_workers_ref_keeps_it_while_the_return_lives():
    w, o = proc("w"), owned(proc("o"), "o.5")       # o submitted a task; o.5 is its return
    z = "w.1"
    w.add_local(z, addr(w))
    assert w.on_sent(z, addr(w), "o") == []          # the result holds z
    assert w.remove_local(z) == []
    assert o.adopt_contained("o.5", [(z, addr(w))], "w") == []
    done = o.remove_local("o.5")
    assert done == [Free("o.5"), Send(addr(w), RemoveBorrower(z, 1)), Free(z)]
    assert w.on_remove_borrower("o", done[1].msg) == [Free(z)]


# ---- process death ----------------------------------------------------------------------------------------

def test_a_dead_process_loses_its_borrows():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    owned(o, Y)
    lend(o, b, X)
    lend(o, b, Y)
    lend(o, c, Y)
    assert o.remove_local(X) == [] and o.remove_local(Y) == []
    assert o.on_process_died("z", T0) == [Timer(T0 + GRACE)]   # a stranger's death changes nothing ...
    assert o.on_tick(T0 + GRACE) == []
    assert o.on_process_died("b", T0) == [Timer(T0 + GRACE)]   # ... and b's borrows outlive it for a while
    assert o.on_tick(T0 + GRACE - 1) == [Timer(T0 + GRACE)]
    assert o.on_tick(T0 + GRACE) == [Free(X)]                  # Y: c still borrows it
    assert o.counts(Y)["borrowers"] == {"c": 1}


def test_refs_of_a_dead_owner_are_reported_and_released_by_dropping_them():
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    assert b.on_process_died("o") == []
    assert b.borrowed_from("o") == [X]
    assert b.remove_local(X) == [Free(X)]   # nothing is sent to a dead owner
    assert len(b) == 0


# ---- crashes mid-protocol -------------------------------------------------------------------------------------------

def test_self_send_of_a_borrowed_ref_registers_like_any_other_send():
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    # An actor on b calls its own method with X: the submitter pins X for the task, sends to itself,
    # and registers the send with the owner as it would for any other receiver.
    add = only_send(b.on_sent(X, addr(o), "b"))
    assert add == AddBorrower(X, "b", addr(b), "b")
    assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
    b.pin(X, addr(o))
    got = arrive(b, X, o, keep=False, sender=b)      # the task ran on b, which confirms like any receiver
    assert o.on_borrow_confirmed("b", confirmation(got, o, X, b)) == [] and got[1:] == []
    assert b.on_borrower_added(BorrowerAdded(X)) == []
    assert b.unpin(X) == []                          # the task is done
    done = b.remove_local(X)
    assert o.on_remove_borrower("b", done[0].msg) == []   # RemoveBorrower(X, 2) balances both registrations
    assert o.counts(X)["borrowers"] == {} and o.counts(X)["pending"] == {}
    lend(o, b, X)                                    # o lends X to b again ...
    assert o.remove_local(X) == []                   # ... so X must outlive o's own ref


def test_self_send_of_an_owned_ref_cancels_a_later_registration():
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    assert o.on_sent(X, addr(o), "o") == []          # an actor on o calls its own method with X
    o.pin(X, addr(o))
    assert arrive(o, X, o, keep=False) == []
    assert o.unpin(X) == []
    add = forward(b, X, o, o)                        # b passes X back to o ...
    assert b.remove_local(X) == []
    o.on_add_borrower(add)
    released = b.on_borrower_added(BorrowerAdded(X))
    assert o.on_remove_borrower("b", released[0].msg) == []
    assert o.remove_local(X) == []                   # ... and that message has not arrived yet


@pytest.mark.parametrize("order", ["confirmed_then_death", "death_then_confirmed"])
def test_crash_of_a_forwarder_before_its_add_borrower_arrives_keeps_the_held_object(order):
    """Once a KNOWN LIMITATION (..._frees_a_held_object): the owner learned of c only from b's AddBorrower,
    which died with b. Now c confirms, and b's own registration holds X until c's confirmation is in."""
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    forward(b, X, c, o)                              # AddBorrower(X, c) is in flight ...
    got = arrive(c, X, o, sender=b)                  # ... the task message got through; c keeps X
    confirmed = confirmation(got, o, X, b)
    # b dies; the AddBorrower is lost with it. c's confirmation reaches o before or after the news.
    if order == "confirmed_then_death":
        assert o.on_borrow_confirmed("c", confirmed) == []
    assert o.on_process_died("b", T0) == [Timer(T0 + GRACE)]   # b's registration outlives b for now
    if order == "death_then_confirmed":
        assert o.on_borrow_confirmed("c", confirmed) == []
    assert o.on_tick(T0 + GRACE) == []               # b's registration goes; c still holds X
    assert o.counts(X)["borrowers"] == {"c": 1} and o.counts(X)["pending"] == {}
    done = c.remove_local(X)
    assert o.on_remove_borrower("c", done[0].msg) == [Free(X)]


@pytest.mark.parametrize("overtaken", [False, True], ids=["died_before_receiving", "died_after_remove_borrower"])
def test_crash_of_a_borrower_before_its_add_borrower_arrives_leaks(overtaken):
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    add = forward(b, X, c, o)
    assert b.remove_local(X) == []
    if overtaken:                                    # c used X and handed it back before b's AddBorrower
        done = arrive(c, X, o, keep=False, sender=b)
        o.on_borrow_confirmed("c", confirmation(done, o, X, b))
        o.on_remove_borrower("c", done[1].msg)
    # c dies: everyone learns it; then b's AddBorrower for c arrives, within c's grace period.
    o.on_process_died("c", T0)
    b.on_process_died("c", T0)
    o.on_add_borrower(add)
    released = b.on_borrower_added(BorrowerAdded(X))
    assert o.on_remove_borrower("b", released[0].msg) == []
    assert o.remove_local(X) + o.on_tick(T0 + GRACE) == [Free(X)]


def test_crash_of_a_forwarder_before_its_message_arrives_frees_the_orphaned_registration():
    """Once a KNOWN LIMITATION (..._leaks): the owner recorded b's AddBorrower for c, b died, and its message
    to c was lost. The registration was tentative (c never confirmed it): it goes after the grace period."""
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    o.on_add_borrower(forward(b, X, c, o))
    # b dies; its task message to c is lost.
    assert o.on_process_died("b", T0) == [Timer(T0 + GRACE)]
    assert c.on_process_died("b", T0) == [Timer(T0 + GRACE)]
    assert o.remove_local(X) == []                   # c's confirmation could still be on its way
    assert o.on_tick(T0 + GRACE - 1) == [Timer(T0 + GRACE)]
    assert o.on_tick(T0 + GRACE) == [Free(X)]
    assert c.on_tick(T0 + GRACE) == [] and len(c) == 0


def test_a_confirmation_before_the_announcement_counts_the_receiver_once():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    add = forward(b, X, c, o)
    assert b.remove_local(X) == []                   # b's pin waits for the owner's BorrowerAdded
    got = arrive(c, X, o, sender=b)                  # c keeps X, and its confirmation overtakes b's AddBorrower
    assert o.on_borrow_confirmed("c", confirmation(got, o, X, b)) == []
    assert o.counts(X)["borrowers"] == {"b": 1, "c": 1} and o.counts(X)["pending"] == {("b", "c"): -1}
    assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]
    assert o.counts(X)["borrowers"] == {"b": 1, "c": 1} and o.counts(X)["pending"] == {}
    released = b.on_borrower_added(BorrowerAdded(X))
    assert o.on_remove_borrower("b", released[0].msg) == []
    done = c.remove_local(X)
    assert done == [Send(addr(o), RemoveBorrower(X, 1)), Free(X)]
    assert o.on_remove_borrower("c", done[0].msg) == [Free(X)]


def test_a_confirmation_after_the_forwarders_death_within_the_grace_period_keeps_the_registration():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    o.on_add_borrower(forward(b, X, c, o))           # tentative: c has not confirmed yet
    got = arrive(c, X, o, sender=b)                  # c got X and keeps it ...
    assert o.on_process_died("b", T0) == [Timer(T0 + GRACE)]   # ... b dies before c's confirmation arrives
    assert o.on_tick(T0 + GRACE // 2) == [Timer(T0 + GRACE)]
    assert o.on_borrow_confirmed("c", confirmation(got, o, X, b)) == []   # the tentative registration is c's
    assert o.on_tick(T0 + GRACE) == []
    assert o.counts(X)["borrowers"] == {"c": 1} and o.counts(X)["pending"] == {}
    done = c.remove_local(X)
    assert o.on_remove_borrower("c", done[0].msg) == [Free(X)]


def test_a_confirmation_naming_a_forwarder_past_its_grace_period_counts_at_once():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    lend(o, c, X)                                    # c also holds X from o: X outlives b's grace period
    assert o.remove_local(X) == []
    add = forward(b, X, c, o)
    got = arrive(c, X, o, sender=b)
    o.on_process_died("b", T0)
    assert o.on_tick(T0 + GRACE) == []
    assert o.on_add_borrower(add) == [Send(addr(b), BorrowerAdded(X))]   # a dead forwarder's word: ignored
    assert o.counts(X)["borrowers"] == {"c": 1}
    assert o.on_borrow_confirmed("c", confirmation(got, o, X, b)) == []  # c's own word counts
    assert o.counts(X)["borrowers"] == {"c": 2} and o.counts(X)["pending"] == {}


def test_a_receiver_dying_before_it_confirms_loses_its_registration():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    add = forward(b, X, c, o)
    assert b.remove_local(X) == []
    o.on_add_borrower(add)
    released = b.on_borrower_added(BorrowerAdded(X))
    assert o.on_remove_borrower("b", released[0].msg) == []   # c's tentative registration holds X
    assert o.on_process_died("c", T0) == [Timer(T0 + GRACE)]  # c dies before b's message reaches it
    assert o.on_tick(T0 + GRACE) == [Free(X)]


def test_a_dead_borrowers_forward_confirmed_by_a_receiver_the_owner_never_heard_of():
    """b forwards X to c and dies at once: its AddBorrower is lost, so only c's confirmation names c. b's own
    registration holds X for the grace period, long enough for it."""
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    assert o.remove_local(X) == []
    forward(b, X, c, o)                              # lost with b
    assert o.on_process_died("b", T0) == [Timer(T0 + GRACE)]   # not freed: b's registration outlives b
    got = arrive(c, X, o, sender=b)                  # b's message was on the wire when b died
    assert o.on_borrow_confirmed("c", confirmation(got, o, X, b)) == []
    assert o.on_tick(T0 + GRACE) == []
    assert o.counts(X)["borrowers"] == {"c": 1}


def test_a_death_learned_without_a_time_starts_its_grace_period_at_the_next_tick():
    o, b = owned(proc("o")), proc("b")
    lend(o, b, X)
    assert o.remove_local(X) == []
    assert o.on_process_died("b") == [] and o.in_grace()
    assert o.on_tick(T0) == [Timer(T0 + GRACE)]
    assert o.on_tick(T0 + GRACE) == [Free(X)] and not o.in_grace()


def test_a_ref_from_a_dead_owner_is_not_confirmed():
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    forward(b, X, c, o)
    c.on_process_died("o", T0)
    assert c.on_received(X, addr(o), "b") == []      # nobody to confirm with: the object is lost anyway


@pytest.mark.parametrize("owner_died", ["after_forward", "before_forward"])
def test_crash_of_the_owner_leaks_the_forward_pin(owner_died):
    o, b, c = owned(proc("o")), proc("b"), proc("c")
    lend(o, b, X)
    if owner_died == "before_forward":
        b.on_process_died("o")
    b.on_sent(X, addr(o), "c")                       # AddBorrower to o: lost
    if owner_died == "after_forward":
        b.on_process_died("o")
    b.remove_local(X)
    assert len(b) == 0, b.counts(X)
