"""Re-forming the table after a majority of its replicas died for good: `p2p table recover`.

Theory of operation. Raft needs a majority of the replica set to elect a leader or commit anything; when a
majority is dead for good (peer ids never come back), no amount of waiting helps. An operator then runs
`p2p table recover` on any surviving peer, whose `Recovery` does this:

1. It asks every surviving member of the replica set how far its log goes (`RecoverQuery`).
2. Once all of them answered (or after `answer_timeout_ms`, with those that did), it picks the most advanced
   log — highest last term, then highest last index, as a Raft vote would — and tells that survivor to lead
   a new replica set made of the survivors that answered (`RecoverLead`). The new leader takes a term above
   every survivor's, so their logs follow its own; then the leader grows the set back as usual.
3. It reports what may have been lost: a write acknowledged by the dead majority after the chosen log's end
   is gone (no survivor holds it), and entries the chosen log held without knowing them committed are now
   committed. Nothing committed that a survivor holds is lost.

Pure, like the other table cores: the driver feeds it `RecoverState` replies and ticks and carries out the
`Send` effects; `outcome` (a dict for the operator) or `error` is set once it is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pcompute.net.effects import Effect, Send
from p2pcompute.table.messages import RecoverLead, RecoverQuery, RecoverState

MS = 1_000_000


@dataclass
class Recovery:
    recovery_id: str
    reply_to: str                    # where survivors send their RecoverState (the recovering peer)
    replicas: list[str]              # the replica set that lost its majority
    survivors: dict[str, str]        # its members still alive: peer id -> address
    deadline_ns: int
    outcome: dict | None = None
    error: str | None = None
    states: dict[str, RecoverState] = field(default_factory=dict)  # the survivors that answered

    @classmethod
    def start(cls, recovery_id: str, reply_to: str, replicas: list[str], survivors: dict[str, str],
              now_ns: int, answer_timeout_ms: int = 3000) -> tuple[Recovery, list[Effect]]:
        rec = cls(recovery_id, reply_to, sorted(replicas), dict(survivors), now_ns + answer_timeout_ms * MS)
        if not survivors:
            rec.error = "no member of the replica set is alive: nothing to recover from"
            return rec, []
        query = RecoverQuery(recovery_id, reply_to)
        return rec, [Send(addr, query) for _peer, addr in sorted(survivors.items())]

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None

    def on_state(self, now_ns: int, msg: RecoverState) -> list[Effect]:
        if self.done or msg.recovery_id != self.recovery_id or msg.node_id not in self.survivors:
            return []
        self.states[msg.node_id] = msg
        if len(self.states) == len(self.survivors):
            return self._decide()
        return []

    def on_tick(self, now_ns: int) -> list[Effect]:
        if self.done or now_ns < self.deadline_ns:
            return []
        if not self.states:
            self.error = (f"no surviving replica ({', '.join(sorted(self.survivors))}) answered; check "
                          f"`p2p status` and try again")
            return []
        return self._decide()

    def _decide(self) -> list[Effect]:
        states = self.states
        best = max(states.values(), key=lambda s: (s.last_term, s.last_index, s.node_id))
        members = {peer: self.survivors[peer] for peer in states}
        term = max(s.term for s in states.values())
        lost = sorted(set(self.replicas) - set(members))
        commit_seen = max(s.commit_index for s in states.values())
        silent = sorted(set(self.survivors) - set(states))
        self.outcome = {
            "leader": best.node_id, "replicas": sorted(members), "lost": lost, "silent": silent,
            "last_index": best.last_index, "last_term": best.last_term, "highest_commit_seen": commit_seen,
            "note": (f"the table was re-formed from {best.node_id}'s log (up to index {best.last_index}, term "
                     f"{best.last_term}) with replicas {', '.join(sorted(members))}. May be lost: writes the "
                     f"lost replicas ({', '.join(lost)}) acknowledged after that index. "
                     + (f"Entries {commit_seen + 1}-{best.last_index} were not known to be committed and "
                        f"now are. " if best.last_index > commit_seen else "")
                     + "Names of actors that lived on the lost peers are released or restarted as usual."),
        }
        return [Send(self.survivors[best.node_id], RecoverLead(self.recovery_id, term, members))]
