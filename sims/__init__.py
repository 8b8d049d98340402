"""Deterministic fault-injection simulation of p2pcompute's real protocol cores (DESIGN.md §3).

`python -m sims run` simulates one seed; `python -m sims sweep` many. The parts, from the bottom:
`engine` (virtual clock, event heap, seeded RNG, event-log hash), `network` (latency, loss, duplication,
reordering, partitions), `peer`/`worker`/`driver` (the cores driven as the runtime drives them), `cluster`
(the world and its ground truth), `faults` (the schedule), `workloads` (what users do, and their checks),
`invariants` (the checks every run shares), `run`/`report`/`cli`. `linearizability` is the table's
history checker. See docs/simulations.md.
"""
