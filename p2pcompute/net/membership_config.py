"""Tuning of the membership protocol, and how fast it detects a failure as a result.

The defaults suit a LAN task system. Anchors: SWIM's expected first detection of about 1.6 probe periods,
and HashiCorp memberlist's LAN profile (probe every 1 s, 500 ms probe timeout, 3 indirect checks, gossip
every 200 ms to 3 members). We probe twice as often (500 ms, 200 ms timeout) because a task system wants
leases of dead peers back quickly, and gossip every 100 ms so that resource views stay fresh.

Detection time with the defaults: the suspicion timeout is 2 s up to 10 peers, 4 s at 100, 6 s at 1,000.
Expected time from a crash until every peer marks it dead: about 0.9 s to the first failed probe (some peer
picks the crashed one within e/(e-1) periods on average, and that probe fails at the end of its period),
then the suspicion timeout, then a gossip round or two. Measured with tests/unit's network: 2.9 s mean at
N=4 (max 3.8 s over 60 runs), 4.4 s at N=50; about 7.5 s expected at N=1,000. Worst case with no message
loss: `detection_bound_ms`, 5 s at N=4; it grows linearly with N (each peer's own round-robin), so for
large clusters use `likely_detection_bound_ms`, which holds except with a tiny, stated probability (18.5 s
at N=1,000 for one miss in 10^9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from p2pcompute.errors import InvalidArgumentError

__all__ = ["MembershipConfig", "suspicion_timeout_ms", "detection_bound_ms", "likely_detection_bound_ms"]


@dataclass(frozen=True)
class MembershipConfig:
    """Tuning of the membership protocol; the defaults suit a LAN (see the module docstring for timings)."""

    probe_interval_ms: int = 500
    probe_timeout_ms: int = 200  # direct ping answer time before asking others; > a LAN round trip
    indirect_checks: int = 3
    suspicion_mult: int = 4
    retransmit_mult: int = 4
    view_retransmit_mult: int = 2  # a missed view is only stale until its next change or the next sync
    gossip_interval_ms: int = 100
    gossip_fanout: int = 3  # members sent each gossip round while membership changes are pending
    view_gossip_fanout: int = 1  # ...and while only resource views are: they are best effort, and churn
    # Least time between gossip rounds that carry only resource views. Views churn with every task, so view
    # rounds would otherwise run every gossip interval for ever; probes and acks carry views too.
    view_gossip_interval_ms: int = 200
    max_updates_per_msg: int = 8
    max_views_per_msg: int = 8
    dead_retention_ms: int = 120_000  # longer than any rumour lives, so none can revive a dead member
    reconnect_interval_ms: int = 1_000  # how often we tell one remembered dead member that it is dead
    sync_interval_ms: int = 5_000  # push-pull anti-entropy; x ceil(N / 32) above 32 members: 160 s at 1,000
    digest_sync_ms: int = 5_000  # least time between syncs asked for by a differing live-set digest; x ceil(N / 128)
    join_retry_ms: int = 1_000  # first retry of an unanswered Join; doubles up to join_retry_max_ms
    join_retry_max_ms: int = 16_000
    leave_fanout: int = 8  # members told directly of a graceful leave
    max_snapshot_members: int = 256  # member records per Snapshot message

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name == "indirect_checks" else 1
            if type(value) is not int or value < least:
                raise InvalidArgumentError(f"MembershipConfig.{f.name} must be an int >= {least}, not {value!r}")
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise InvalidArgumentError(
                f"MembershipConfig.probe_timeout_ms ({self.probe_timeout_ms}) must be shorter than "
                f"probe_interval_ms ({self.probe_interval_ms}), or indirect probes have no time to run")


def suspicion_timeout_ms(config: MembershipConfig, n_members: int) -> int:
    """How long a suspect has to refute before it is declared dead (memberlist's formula)."""
    return int(config.suspicion_mult * max(1.0, math.log10(max(1, n_members))) * config.probe_interval_ms)


def detection_bound_ms(config: MembershipConfig, n_members: int) -> int:
    """Upper bound on the time from a crash until every live peer has marked the crashed one dead.

    Assumes no message loss and a stable membership of `n_members` (the crashed peer included), with each
    `Timer` honoured when due. Every live peer detects the crash by its own probing, whatever the others do:
    its round-robin list holds the M = n_members - 1 others in a fresh random order each cycle, so the crashed
    peer, last probed at or before the crash, is probed again within 2M - 1 periods; that probe fails by the
    end of its period (2M periods in all), and the suspicion timeout follows. Rumours can only make it sooner.
    """
    others = max(1, n_members - 1)
    return 2 * others * config.probe_interval_ms + suspicion_timeout_ms(config, n_members)


def likely_detection_bound_ms(config: MembershipConfig, n_members: int, miss_probability: float = 1e-9) -> int:
    """Like `detection_bound_ms`, but holds except with probability about `miss_probability`; far tighter
    for large clusters (linear in N becomes logarithmic). Assumes no loss and light rumour load.

    With M independent probers on random schedules, the chance that none starts a probe of the crashed peer
    within k periods is at most exp(-k (1 - k / 4M)); one more period for that probe to fail; then the
    suspicion spreads by push gossip in about log_{f+1} N + (ln N + ln 1/p) / f rounds (fanout f), and each
    peer's suspicion timer runs out.
    """
    if not 0 < miss_probability < 1:
        raise InvalidArgumentError(f"miss_probability must be between 0 and 1, not {miss_probability!r}")
    others = max(1, n_members - 1)
    target = math.log(1 / miss_probability)
    k = 1
    while k * (1 - k / (4 * others)) < target and k < 2 * others:
        k += 1
    fanout = config.gossip_fanout
    rounds = math.ceil(math.log(max(2, n_members)) / math.log(fanout + 1)
                       + (math.log(max(2, n_members)) + target) / fanout)
    likely = ((k + 1) * config.probe_interval_ms + rounds * config.gossip_interval_ms
              + suspicion_timeout_ms(config, n_members))
    return min(likely, detection_bound_ms(config, n_members))
