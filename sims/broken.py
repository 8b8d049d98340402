"""Cores broken on purpose, for the tests that prove the simulator's checks can fail (`--break refcount`).

The lease and membership cores carry their own test-only switches (`LeaseCore._test_ignore_capacity`,
`Membership._test_skip_refutation`), which `--break capacity` and `--break refutation` turn on. The
reference table has none, so its planted bug lives here: the variant the property tests use
(tests/property/test_refcount_props.py), an owner that acknowledges a forwarded registration without
recording it. A borrower that forwards a ref to a third process then leaves the owner unaware of that
process, and the owner frees the object while the third process still holds it.
"""

from __future__ import annotations

from p2pcompute.net.effects import Send
from p2pcompute.ownership.messages import BorrowerAdded
from p2pcompute.ownership.refcount import ReferenceTable


class OwnerIgnoresAddBorrower(ReferenceTable):
    """Planted bug: the owner acknowledges `AddBorrower` without recording the new borrower."""

    def on_add_borrower(self, msg):
        return [Send(msg.reply_to, BorrowerAdded(msg.object_id))]
