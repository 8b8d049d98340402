"""The checks can fail: each core, broken on purpose, is caught, and the printed replay command reproduces it.

`--break capacity` builds `sims.broken.LeaseCoreIgnoringCapacity` (grants without reserving resources);
`--break refutation` builds `sims.broken.MembershipRefutingItsDeath` (a peer declared dead refutes instead of
being fenced — pauses longer than the suspicion timeout make that happen — and is never agreed on again); `--break refcount` swaps in
`sims.broken.OwnerIgnoresAddBorrower` (an owner that forgets borrowers registered by a forwarder — the
actors workload forwards refs to third parties). Two bugs are planted in the product's owner core itself
(`sims/broken_owner.py`), which the dag and actors drivers run: `--break lineage` keeps lineage but not the
arguments a rebuild needs (a peer crash makes the owner rebuild a lost stored result and push refs to freed
objects), `--break actor-calls` forgets the calls in flight when an actor's worker dies (worker kills; the
calls never end). Each run without the switch is clean, so it is the switch that the simulator catches.
"""

from __future__ import annotations

import pytest

from sims_testing import event_hash, failed_invariants, replay_argv, run_cli

CASES = [
    ("capacity", "lease_capacity", ["--peers", "8", "--seconds", "5", "--workload", "tasks", "--load", "1.5"]),
    ("refutation", "membership_agreement",
     ["--peers", "8", "--seconds", "20", "--workload", "membership", "--faults", "pause=0.02,pause_for=const:8s"]),
    ("refcount", "refs_safe", ["--peers", "12", "--seconds", "10", "--workload", "actors"]),
    ("lineage", "refs_safe",
     ["--peers", "12", "--seconds", "8", "--seed", "3", "--workload", "dag", "--faults", "crash=0.05,restart=0.5"]),
    ("actor-calls", "tasks_finish",
     ["--peers", "12", "--seconds", "8", "--seed", "2", "--workload", "actors", "--faults", "kill=0.05"]),
]


@pytest.mark.parametrize("switch, invariant, argv", CASES, ids=[c[0] for c in CASES])
def test_a_broken_core_is_caught_and_the_replay_reproduces_it(switch, invariant, argv):
    status, out = run_cli(["run", *argv, "--break", switch])
    assert status == 1, out
    assert invariant in failed_invariants(out), out
    replay = replay_argv(out)
    assert "--break" in replay and switch in replay
    status2, again = run_cli(replay)
    assert status2 == 1
    assert failed_invariants(again) == failed_invariants(out)
    assert event_hash(again) == event_hash(out)


@pytest.mark.parametrize("switch, invariant, argv", CASES, ids=[c[0] for c in CASES])
def test_the_same_run_without_the_switch_is_clean(switch, invariant, argv):
    status, out = run_cli(["run", *argv])
    assert status == 0, out
    assert not failed_invariants(out)
