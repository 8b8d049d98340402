"""Cores broken on purpose, for the tests that prove the checks can fail. The production cores carry no
test switches: each planted bug is a subclass here, which the simulator builds when asked.

- `--break capacity`: `LeaseCoreIgnoringCapacity` grants without checking or reserving resources. Its own
  `check_invariants` is left on, so the core's accounting check catches it as well as the simulator's audit.
- `--break refutation`: `MembershipRefutingItsDeath`, a peer that refutes a declaration of its death
  instead of being fenced (the bug issue 11 fixed): after a pause or partition longer than the suspicion
  timeout it lives on under its old id, while owners wrote off what its processes borrowed, and a live
  process ends up with a ref to a freed object (`refs_safe`).
- `MembershipSkippingRefutation` (tests/unit/test_membership.py) never outbids a suspicion of itself, so a
  slow peer is declared dead (and so fenced).
- `RaftCommittingWithoutQuorum` and `RaftVotingWithoutLogCheck` (tests/property/test_table_props.py): a leader
  that treats an entry as committed as soon as it is in its own log (acknowledging writes no majority
  holds), and voters that skip the check that a candidate's log is at least as up to date as theirs.
- `--break refcount` (and tests/property/test_refcount_props.py): `OwnerIgnoresAddBorrower`, an owner that
  acknowledges a forwarded registration without recording it. A borrower that forwards a ref to a third
  process then leaves the owner unaware of that process, and the owner frees the object while the third
  process still holds it.
"""

from __future__ import annotations

from p2pcompute.lease.core import LeaseCore
from p2pcompute.net.effects import Send
from p2pcompute.net.membership import Membership
from p2pcompute.ownership.messages import BorrowerAdded
from p2pcompute.ownership.refcount import ReferenceTable
from p2pcompute.table.raft import TableReplica


class LeaseCoreIgnoringCapacity(LeaseCore):
    """Planted bug: grants whatever is asked, without checking or reserving resources."""

    def _fits_available(self, shape: dict) -> bool:
        return True

    def _reserve(self, shape: dict) -> None:
        pass


class MembershipRefutingItsDeath(Membership):
    """Planted bug: a peer told it was declared dead outbids the claim, as a suspicion, instead of being fenced."""

    def _declared_dead(self, claimed_incarnation, sender, out) -> None:
        self._refute(claimed_incarnation, sender, out)


class MembershipSkippingRefutation(Membership):
    """Planted bug: a peer never refutes a suspicion of itself."""

    def _refute_suspicion(self, claimed_incarnation, sender, out) -> None:
        pass


class OwnerIgnoresAddBorrower(ReferenceTable):
    """Planted bug: the owner acknowledges `AddBorrower` without recording the new borrower."""

    def on_add_borrower(self, msg):
        return [Send(msg.reply_to, BorrowerAdded(msg.object_id))]

    def on_borrow_confirmed(self, sender_id, msg):
        return []  # nor from the receiver's confirmation, which would register it otherwise


class RaftCommittingWithoutQuorum(TableReplica):
    """Planted bug: an entry counts as committed as soon as it is in the leader's own log."""

    def _majority_match(self) -> int:
        return self.log.last_index()


class RaftVotingWithoutLogCheck(TableReplica):
    """Planted bug: a voter grants its vote whatever the candidate's log holds."""

    def _log_up_to_date(self, last_term: int, last_index: int) -> bool:
        return True


BROKEN_RAFT = {"commit_without_quorum": RaftCommittingWithoutQuorum,
               "vote_without_log_check": RaftVotingWithoutLogCheck}
