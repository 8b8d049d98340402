"""A linearizability checker for histories of a key-value store.

Theory of operation. A history is a list of operations, each with the time it was invoked and the time its
response arrived (None when no response came: a crashed client or a request that timed out, which may or may
not have taken effect). It is linearizable when each operation can be given one instant between its
invocation and its response such that the operations, run one at a time in that order against the
sequential model, return what they actually returned.

Linearizability is compositional (P-compositionality): the history is linearizable exactly when each key's
sub-history is, so keys are checked one at a time. For one key the search is Wing & Gong's, with Lowe's
memoization, as in Porcupine: walk the events in time order; at a call, try to linearize that operation now
(the model must accept its output); at a return whose call has not been linearized, backtrack. A set of
(linearized operations, model state) pairs already explored prunes repeats, which keeps the search fast in
practice: the search branches only as far as operations really overlap.

An operation without a response may take effect at any time after its invocation, or never; it is treated
as returning at the end of time with an output the model accepts whatever it is. A read without a response
tells nothing and is dropped.

Times only need to be comparable. An operation precedes another when its response time is strictly less
than the other's invocation time; equal times count as concurrent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol


@dataclass(frozen=True)
class Operation:
    key: Hashable
    input: tuple          # e.g. ("put", 3), ("get",), ("cas", 3, 4), ("claim", "me"), ("delete",)
    output: Any           # ignored when response is None
    invoke: int
    response: int | None  # None: no response; it may or may not have taken effect
    client: str = ""      # for messages only


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, input: tuple, output: Any, known: bool) -> tuple[bool, Hashable]:
        """(does the model allow `output` for `input` in `state`, the state after). `known` is False for an
        operation without a response: any output is allowed, only the state matters."""
        ...

    def read_only(self, input: tuple) -> bool: ...


class KVModel:
    """One key of the table: a register with put / get / delete / compare-and-set, or a name (claim).

    State is the value, None when absent. Outputs: put -> anything; get -> the value or None;
    delete -> whether the key existed; cas(expected, new) -> whether it swapped (expected None = absent);
    claim(v) -> (claimed, holder).
    """

    def init(self) -> Hashable:
        return None

    def read_only(self, input: tuple) -> bool:
        return input[0] == "get"

    def step(self, state: Hashable, input: tuple, output: Any, known: bool) -> tuple[bool, Hashable]:
        kind = input[0]
        if kind == "put":
            return True, input[1]
        if kind == "get":
            return (not known or output == state), state
        if kind == "delete":
            return (not known or output == (state is not None)), None
        if kind == "cas":
            swapped = state == input[1]
            return (not known or output == swapped), (input[2] if swapped else state)
        if kind == "claim":
            expected = (True, input[1]) if state is None else (False, state)
            return (not known or tuple(output) == expected), expected[1]
        raise ValueError(f"KVModel does not know operation {kind!r}")


@dataclass
class CheckResult:
    ok: bool | None                 # None: the search exceeded its budget (undecided)
    key: Hashable = None            # the first key found not linearizable (or undecided)
    operations: list = field(default_factory=list)  # that key's operations
    longest_prefix: int = 0         # the most of them the search managed to linearize
    states_explored: int = 0

    def describe(self) -> str:
        if self.ok:
            return f"linearizable ({self.states_explored} states explored)"
        head = "not linearizable" if self.ok is False else "undecided (search budget exceeded)"
        ops = "\n".join(f"  [{op.invoke}, {op.response}] {op.client} {op.input} -> {op.output}"
                        for op in sorted(self.operations, key=lambda op: op.invoke))
        return (f"{head} at key {self.key!r}: at most {self.longest_prefix} of {len(self.operations)} "
                f"operations linearize\n{ops}")


def check(operations: list[Operation], model: Model | None = None, *,
          max_states_per_key: int = 1_000_000) -> CheckResult:
    """Check a whole history, key by key; the first failing key is reported."""
    model = model or KVModel()
    by_key: dict[Hashable, list[Operation]] = {}
    for op in operations:
        if op.response is None and model.read_only(op.input):
            continue
        by_key.setdefault(op.key, []).append(op)
    explored = 0
    for key, ops in by_key.items():
        ok, longest, states = _check_key(ops, model, max_states_per_key)
        explored += states
        if ok is not True:
            return CheckResult(ok, key, ops, longest, explored)
    return CheckResult(True, states_explored=explored)


def _check_key(ops: list[Operation], model: Model, max_states: int) -> tuple[bool | None, int, int]:
    """Wing & Gong / Lowe search over one key. Returns (ok, longest linearized prefix, states explored)."""
    n = len(ops)
    end_of_time = float("inf")
    # Events: call (0) before return (1) at equal times, so equal times count as concurrent.
    events = sorted([(op.invoke, 0, i) for i, op in enumerate(ops)]
                    + [(end_of_time if op.response is None else op.response, 1, i) for i, op in enumerate(ops)])
    # A doubly linked list over event positions 1..2n, with head 0 and tail 2n+1 (dancing links).
    size = 2 * n
    is_call = [False] * (size + 2)
    op_of = [0] * (size + 2)
    match = [0] * (size + 2)  # call position -> its return position
    call_at = {}
    for position, (_, kind, i) in enumerate(events, start=1):
        is_call[position], op_of[position] = kind == 0, i
        if kind == 0:
            call_at[i] = position
        else:
            match[call_at[i]] = position
    nxt = list(range(1, size + 3))
    prv = list(range(-1, size + 1))
    head, tail = 0, size + 1

    def lift(call: int) -> None:
        for position in (call, match[call]):
            nxt[prv[position]], prv[nxt[position]] = nxt[position], prv[position]

    def unlift(call: int) -> None:
        for position in (match[call], call):  # reverse order of removal
            nxt[prv[position]] = prv[nxt[position]] = position

    known = [op.response is not None for op in ops]
    seen: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable]] = []
    state = model.init()
    linearized = 0
    longest = 0
    position = nxt[head]
    while nxt[head] != tail:
        if is_call[position]:
            i = op_of[position]
            op = ops[i]
            allowed, after = model.step(state, op.input, op.output, known[i])
            if allowed:
                marked = linearized | (1 << i)
                if (marked, after) not in seen:
                    if len(seen) >= max_states:
                        return None, longest, len(seen)
                    seen.add((marked, after))
                    stack.append((position, state))
                    state, linearized = after, marked
                    longest = max(longest, len(stack))
                    lift(position)
                    position = nxt[head]
                    continue
            position = nxt[position]
        else:
            # A return whose operation is not linearized yet: nothing later can go first. Backtrack.
            if not stack:
                return False, longest, len(seen)
            position, state = stack.pop()
            linearized &= ~(1 << op_of[position])
            unlift(position)
            position = nxt[position]
    return True, n, len(seen)
