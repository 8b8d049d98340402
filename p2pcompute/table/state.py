"""The replicated state machine: names, a small KV, jobs and detached actors.

Theory of operation. Every replica applies the same committed commands in the same order, so everything here
is deterministic: no clock, no randomness, no iteration over unordered containers that affects results. The
state is four tables of plain records:

    names   name     -> value                 claimed once; a later claim returns the holder's value;
                                              moved only by replace_name from the value it expects
    kv      key      -> (value, version)      version = log index of the write that made it (> 0)
    jobs    job_id   -> record dict
    actors  actor_id -> record dict           detached actors that may be restarted on another peer

A write reports what it changed as `changes`: a list of `(table, key, record)` with record None for a
deletion. Subscribers apply the same changes to their caches (`apply_changes`), which is why records are
never mutated in place.

Exactly-once for retried writes: each command carries `(client_id, request_id, acked_below)`. A session per
client remembers the outcome of each request id at or above the client's `acked_below` (every id below it
has had its reply delivered), so a retry gets the first outcome back instead of being applied again. The
least recently used sessions beyond `max_sessions` are dropped; a client silent for that long loses the
guarantee for a request still in flight — the cost of bounding memory, as in the Raft dissertation.

An operation is a tuple whose first element names it (see `_OPS`). A malformed operation is answered with
`ok=False, error=BAD_OP`; it never raises, because it came from the network.
"""

from __future__ import annotations

from typing import Any, Callable

from p2pcompute.table.messages import BAD_OP, STALE_REQUEST

TABLES = ("names", "kv", "jobs", "actors")
MAX_SESSIONS = 10_000

Outcome = tuple  # (ok, result, error)


class _BadOp(Exception):
    pass


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _BadOp(f"{what} must be a string, not {type(value).__name__}")
    return value


def _present(value: Any, what: str) -> Any:
    if value is None:
        raise _BadOp(f"{what} must not be None (None means absent)")
    return value


def _record(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _BadOp(f"{what} must be a dict, not {type(value).__name__}")
    return dict(value)


class TableState:
    """The four tables and the client sessions. `read` never changes anything; `apply_command` is the only
    way a committed command changes the state."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.tables: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
        # client_id -> [floor, {request_id: outcome}]. Dict order is least recently used first.
        self.sessions: dict[str, list] = {}
        self.max_sessions = max_sessions

    # ---- committed commands ----

    def apply_command(self, index: int, client_id: str, request_id: int, acked_below: int,
                      op: Any) -> tuple[Outcome, list]:
        """Apply one client command at log `index`, at most once per (client_id, request_id)."""
        session = self.sessions.pop(client_id, None) or [0, {}]
        self.sessions[client_id] = session  # most recently used goes last
        floor, outcomes = session
        if request_id < floor:
            return (False, None, STALE_REQUEST), []
        if request_id in outcomes:
            return outcomes[request_id], []
        if acked_below > floor:
            session[0] = acked_below
            for old in [rid for rid in outcomes if rid < acked_below]:
                del outcomes[old]
        outcome, changes = self.execute(index, op)
        outcomes[request_id] = outcome
        while len(self.sessions) > self.max_sessions:
            del self.sessions[next(iter(self.sessions))]
        return outcome, changes

    def outcome_of(self, client_id: str, request_id: int) -> Outcome | None:
        """The recorded outcome of an applied request, so a retry can be answered without the log."""
        session = self.sessions.get(client_id)
        return session[1].get(request_id) if session else None

    def execute(self, index: int, op: Any) -> tuple[Outcome, list]:
        """Run `op` as if committed at `index`, without deduplication."""
        try:
            handler, arity = _lookup(op)
            if handler in _READS:
                return (True, handler(self, *op[1:]), ""), []
            result, changes = handler(self, index, *op[1:])
        except _BadOp as exc:
            return (False, None, f"{BAD_OP}: {exc}"), []
        for table, key, record in changes:
            if record is None:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = record
        return (True, result, ""), changes

    def read(self, op: Any) -> Outcome:
        """Answer a read-only operation from the current state."""
        try:
            handler, _ = _lookup(op)
            if handler not in _READS:
                raise _BadOp(f"{op[0]!r} is not a read")
            return True, handler(self, *op[1:]), ""
        except _BadOp as exc:
            return False, None, f"{BAD_OP}: {exc}"

    def apply_changes(self, changes: list) -> None:
        """Apply committed changes pushed by a replica (the cache side of a subscription)."""
        for table, key, record in changes:
            if record is None:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = record

    # ---- snapshots ----

    def snapshot(self) -> dict:
        return {"tables": self.records(),
                "sessions": [[cid, floor, list(outcomes.items())] for cid, (floor, outcomes) in
                             self.sessions.items()]}

    def records(self) -> dict:
        return {name: dict(rows) for name, rows in self.tables.items()}

    @classmethod
    def restore(cls, data: Any, max_sessions: int = MAX_SESSIONS) -> TableState:
        """Rebuild from `snapshot()` output (None is the empty state). Raises ValueError if malformed."""
        state = cls(max_sessions)
        if data is None:
            return state
        try:
            state.load_records(data["tables"])
            for cid, floor, outcomes in data["sessions"]:
                if not (isinstance(cid, str) and type(floor) is int):
                    raise ValueError("a session is (client id, floor, outcomes)")
                state.sessions[cid] = [floor, {}]
                for rid, (ok, result, error) in outcomes:
                    if type(rid) is not int or type(ok) is not bool or not isinstance(error, str):
                        raise ValueError("an outcome is (request id, (ok, result, error))")
                    state.sessions[cid][1][rid] = (ok, result, error)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed table snapshot: {exc!r}") from None
        return state

    def load_records(self, records: Any) -> None:
        """Replace every table with `records` (from a snapshot). Raises ValueError if malformed."""
        if not isinstance(records, dict) or set(records) != set(TABLES):
            raise ValueError("records must be a dict of the four tables")
        for table, rows in records.items():
            if not isinstance(rows, dict) or not all(change_ok((table, key, record)) and record is not None
                                                     for key, record in rows.items()):
                raise ValueError(f"malformed rows in table {table!r}")
        self.tables = {name: dict(records[name]) for name in TABLES}

    # ---- reads ----

    def _get_name(self, name):
        return self.tables["names"].get(_str(name, "name"))

    def _list_names(self, prefix):
        prefix = _str(prefix, "prefix")
        return [(k, v) for k, v in sorted(self.tables["names"].items()) if k.startswith(prefix)]

    def _get(self, key):
        return self.tables["kv"].get(_str(key, "key"))

    def _list(self, prefix):
        prefix = _str(prefix, "prefix")
        return [(k, v, ver) for k, (v, ver) in sorted(self.tables["kv"].items()) if k.startswith(prefix)]

    def _job_get(self, job_id):
        return self.tables["jobs"].get(_str(job_id, "job id"))

    def _job_list(self):
        return sorted(self.tables["jobs"].items())

    def _actor_get(self, actor_id):
        return self.tables["actors"].get(_str(actor_id, "actor id"))

    def _actor_list(self):
        return sorted(self.tables["actors"].items())

    # ---- writes: each returns (result, changes) ----

    def _claim(self, index, name, value):
        holder = self.tables["names"].get(_str(name, "name"))
        if holder is not None:
            # The same value again is the same claim applied twice (a client that retried after a leader
            # change without learning of its first commit): it won, and must hear so, not that it lost to
            # itself. Claim values are unique (they carry a fresh actor id), so no one else can match.
            return (holder == value, holder), []
        value = _present(value, "claimed value")
        return (True, value), [("names", name, value)]

    def _replace_name(self, index, name, expected, value):
        """Move a name from `expected` to `value` (a detached actor restarted on another peer keeps its name):
        done only if the name is still held by `expected`, so of racing restarts exactly one wins."""
        holder = self.tables["names"].get(_str(name, "name"))
        value = _present(value, "new value")
        if holder == value:
            return (True, holder), []  # the same replacement applied twice (a retried request)
        if holder is None or holder != expected:
            return (False, holder), []
        return (True, value), [("names", name, value)]

    def _release(self, index, name, expected):
        holder = self.tables["names"].get(_str(name, "name"))
        if holder is None or (expected is not None and holder != expected):
            return False, []
        return True, [("names", name, None)]

    def _put(self, index, key, value):
        return index, [("kv", _str(key, "key"), (_present(value, "value"), index))]

    def _delete(self, index, key):
        existed = _str(key, "key") in self.tables["kv"]
        return existed, [("kv", key, None)] if existed else []

    def _cas(self, index, key, expected, new):
        current = self.tables["kv"].get(_str(key, "key"))
        matches = (current is None) if expected is None else (current is not None and current[0] == expected)
        return self._swap(index, key, current, matches, new)

    def _cas_version(self, index, key, expected_version, new):
        if isinstance(expected_version, bool) or not isinstance(expected_version, int):
            raise _BadOp("expected version must be an int (0 means absent)")
        current = self.tables["kv"].get(_str(key, "key"))
        return self._swap(index, key, current, (current[1] if current else 0) == expected_version, new)

    def _swap(self, index, key, current, matches, new):
        """Compare-and-set's second half: on a match write `new` (None deletes); report (ok, record after)."""
        if not matches:
            return (False, current), []
        record = None if new is None else (new, index)
        if record is None and current is None:
            return (True, None), []
        return (True, record), [("kv", key, record)]

    def _job_register(self, index, job_id, record):
        existing = self.tables["jobs"].get(_str(job_id, "job id"))
        if existing is not None:
            return (False, existing), []
        record = _record(record, "job record")
        return (True, record), [("jobs", job_id, record)]

    def _job_update(self, index, job_id, fields):
        existing = self.tables["jobs"].get(_str(job_id, "job id"))
        fields = _record(fields, "job fields")
        if existing is None:
            return None, []
        record = {**existing, **fields}
        return record, [("jobs", job_id, record)]

    def _actor_put(self, index, actor_id, record):
        return True, [("actors", _str(actor_id, "actor id"), _record(record, "actor record"))]

    def _actor_delete(self, index, actor_id):
        existed = _str(actor_id, "actor id") in self.tables["actors"]
        return existed, [("actors", actor_id, None)] if existed else []


# op name -> (method, number of arguments after the name)
_OPS: dict[str, tuple[Callable, int]] = {
    "get_name": (TableState._get_name, 1), "list_names": (TableState._list_names, 1),
    "get": (TableState._get, 1), "list": (TableState._list, 1),
    "job_get": (TableState._job_get, 1), "job_list": (TableState._job_list, 0),
    "actor_get": (TableState._actor_get, 1), "actor_list": (TableState._actor_list, 0),
    "claim": (TableState._claim, 2), "release": (TableState._release, 2),
    "replace_name": (TableState._replace_name, 3),
    "put": (TableState._put, 2), "delete": (TableState._delete, 1),
    "cas": (TableState._cas, 3), "cas_version": (TableState._cas_version, 3),
    "job_register": (TableState._job_register, 2), "job_update": (TableState._job_update, 2),
    "actor_put": (TableState._actor_put, 2), "actor_delete": (TableState._actor_delete, 1),
}
READ_OPS = frozenset({"get_name", "list_names", "get", "list", "job_get", "job_list", "actor_get", "actor_list"})
_READS = frozenset(_OPS[name][0] for name in READ_OPS)


def _lookup(op: Any) -> tuple[Callable, int]:
    if not isinstance(op, tuple) or not op or not isinstance(op[0], str):
        raise _BadOp("an operation is a non-empty tuple starting with its name")
    spec = _OPS.get(op[0])
    if spec is None:
        raise _BadOp(f"unknown operation {op[0]!r}")
    if len(op) != spec[1] + 1:
        raise _BadOp(f"{op[0]!r} takes {spec[1]} argument(s), got {len(op) - 1}")
    return spec


def op_problem(op: Any) -> str | None:
    """Why `op` is not a well-formed operation (its shape: name and number of arguments), or None."""
    try:
        _lookup(op)
    except _BadOp as exc:
        return str(exc)
    return None


def change_ok(change: Any) -> bool:
    """Is `change` a well-formed `(table, key, record)`? For changes and records that came from the network."""
    if not (isinstance(change, tuple) and len(change) == 3 and change[0] in TABLES and isinstance(change[1], str)):
        return False
    table, _, record = change
    if record is None or table == "names":
        return True
    if table == "kv":
        return isinstance(record, tuple) and len(record) == 2 and type(record[1]) is int and record[0] is not None
    return isinstance(record, dict)


def is_read(op: Any) -> bool:
    """True for a well-formed read-only operation (served without the log, by ReadIndex or a cache)."""
    return op_problem(op) is None and op[0] in READ_OPS
