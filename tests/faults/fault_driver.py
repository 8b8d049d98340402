"""A driver process for the fault tests: attaches to one peer and reports on stdout, one JSON object a line.

    python fault_driver.py ADDRESS TOKEN_FILE MODE [options]

Modes:
  job    run the map-reduce graph once (`--maps`, `--group`), printing progress as reduces finish, then the
         result. With `--hold`, keep every map output and hand some of them, and a `put` object, to an actor
         (borrowed refs, nested in a list); print `holding`; on stdin `drop`, drop every ref and the actor
         and print `dropped`; then stay attached until stdin says `exit` (so that freeing is the reference
         counting's doing, not the driver's exit).
  waves  run small map-reduce graphs back to back, each checked by the test, until stdin says `stop`.
         Before the first wave, write a kv key and create a named actor that later drivers look up.
  table  a new driver: read the kv key and the named actor made by `waves`, write a key, claim a new name,
         and run one small graph.
  probe  a new driver: write and read back a kv key, and run one small graph.

Events: {"event": "ready", ...}, {"event": "progress", "done": k, "of": n}, {"event": "result", "value": v,
"elapsed_s": s}, {"event": "holding"}, {"event": "dropped"}, {"event": "wave_start", ...}, {"event": "wave", ...},
{"event": "table", ...}, {"event": "probe", ...}, {"event": "error", ...}. Every event has `t`: seconds since
this process started, on the machine's monotonic clock (so the test can place events on its own clock).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import traceback

import p2pcompute as p2p
from mapreduce_job import combine, groups, map_task, reduce_task

KV_KEY = "faults/before-kill"
KV_VALUE = "written before the first peer died"
ACTOR_NAME = "faults-keeper"

T0 = time.monotonic()


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - T0, 3), **fields}), flush=True)


class Rebuilds(logging.Handler):
    """Counts the client's 'rebuilding ... by re-running' log lines: lineage reconstruction at work."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("rebuilding "):
            self.count += 1


def run_graph(mapper, reducer, first_map: int, n_maps: int, group: int, exec_log, work_ms: int,
              progress: bool, keep: list | None = None) -> int:
    maps = [mapper.remote(i, exec_log, work_ms) for i in range(first_map, first_map + n_maps)]
    reduces = [reducer.remote(*[maps[i - first_map] for i in which]) for which in groups(first_map, n_maps, group)]
    # Like a real shuffle, the driver keeps no map output (unless told to `keep` them): each is held only by
    # the reduce that reads it, and freed once that reduce is done. A map output lost before then must be
    # rebuilt from its lineage.
    if keep is not None:
        keep.extend(maps)
    del maps
    index = {r.id: g for g, r in enumerate(reduces)}
    values: list = [None] * len(reduces)
    pending = list(reduces)
    last = -1
    while pending:
        ready, pending = p2p.wait(pending, num_returns=len(pending), timeout=0.2)
        for ref, value in zip(ready, p2p.get(ready, timeout=120) if ready else []):
            values[index[ref.id]] = value
        done = len(reduces) - len(pending)
        if progress and done != last:
            emit("progress", done=done, of=len(reduces))
            last = done
    return combine(values)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("token_file")
    parser.add_argument("mode", choices=["job", "waves", "table", "probe"])
    parser.add_argument("--maps", type=int, default=40)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--exec-log", default=None)
    parser.add_argument("--work-ms", type=int, default=0)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()

    rebuilds = Rebuilds()
    client_log = logging.getLogger("p2pcompute.client")
    client_log.addHandler(rebuilds)
    to_stderr = logging.StreamHandler(sys.stderr)  # the test keeps it as driver.log, for diagnosis
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    client_log.addHandler(to_stderr)
    client_log.setLevel(logging.INFO)

    token = open(args.token_file).read().strip()
    info = p2p.init(address=args.address, token=token)
    mapper = p2p.remote(map_task)
    reducer = p2p.remote(reduce_task)
    emit("ready", node_id=info["node_id"], worker_id=info["worker_id"])

    if args.mode == "job":
        t = time.monotonic()
        kept: list | None = [] if args.hold else None
        value = run_graph(mapper, reducer, 0, args.maps, args.group, args.exec_log, args.work_ms, True, kept)
        emit("result", value=value, elapsed_s=round(time.monotonic() - t, 3), rebuilds=rebuilds.count)
        if args.hold:
            hold_then_drop(kept)
    elif args.mode == "waves":
        run_waves(mapper, reducer, args, rebuilds)
    elif args.mode == "table":
        run_table_checks(mapper, reducer, args)
    else:
        key = f"faults/probe-{info['worker_id']}"
        p2p.kv.put(key, "here")
        kv = p2p.kv.get(key, linearizable=True)
        value = run_graph(mapper, reducer, 0, args.maps, args.group, args.exec_log, 0, False)
        emit("probe", kv=kv, value=value)
    p2p.shutdown()
    return 0


def hold_then_drop(kept: list) -> None:
    import numpy as np

    @p2p.remote
    class Holder:
        def __init__(self):
            self.held = None

        def hold(self, refs):  # the refs arrive nested in a list: they stay refs, borrowed from the driver
            self.held = refs
            return sum(int(a.sum()) for a in p2p.get(refs[:3], timeout=60))

    put_ref = p2p.put(np.ones(1 << 17, dtype=np.int64))
    holder = Holder.remote()
    p2p.get(holder.hold.remote([put_ref] + kept[::10]), timeout=60)
    emit("holding", maps=len(kept))
    for line in sys.stdin:
        if line.strip() == "drop":
            break
    del kept[:], put_ref, holder
    emit("dropped")
    for line in sys.stdin:
        if line.strip() == "exit":
            break


def run_waves(mapper, reducer, args, rebuilds: Rebuilds) -> None:
    @p2p.remote(max_restarts=-1)
    class Keeper:
        def ping(self):
            return "pong"

    keeper = Keeper.options(name=ACTOR_NAME).remote()
    assert p2p.get(keeper.ping.remote(), timeout=60) == "pong"
    p2p.kv.put(KV_KEY, KV_VALUE)
    emit("table_ready")

    stop = threading.Event()

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    wave = 0
    while not stop.is_set():
        first = wave * args.maps
        emit("wave_start", wave=wave, first_map=first)
        t = time.monotonic()
        try:
            value = run_graph(mapper, reducer, first, args.maps, args.group, args.exec_log, args.work_ms, False)
        except Exception as exc:  # reported, and the test fails on it: no wave may be lost
            emit("wave", wave=wave, first_map=first, ok=False, error=f"{type(exc).__name__}: {exc}",
                 elapsed_s=round(time.monotonic() - t, 3), traceback=traceback.format_exc())
        else:
            emit("wave", wave=wave, first_map=first, ok=True, value=value,
                 elapsed_s=round(time.monotonic() - t, 3), rebuilds=rebuilds.count)
        wave += 1
    del keeper


def run_table_checks(mapper, reducer, args) -> None:
    out: dict = {"took_s": {}}
    step_t = time.monotonic()

    def took(step: str) -> None:
        nonlocal step_t
        now = time.monotonic()
        out["took_s"][step] = round(now - step_t, 3)
        step_t = now

    out["kv_before"] = p2p.kv.get(KV_KEY, linearizable=True)
    p2p.kv.put("faults/after-kill", "yes")
    out["kv_after"] = p2p.kv.get("faults/after-kill", linearizable=True)
    took("kv")
    keeper = p2p.get_actor(ACTOR_NAME)
    out["keeper"] = p2p.get(keeper.ping.remote(), timeout=60)
    took("old_actor")

    @p2p.remote
    class Fresh:
        def where(self):
            return p2p.get_runtime_context().node_id

    fresh = Fresh.options(name="faults-after-kill").remote()
    out["fresh_node"] = p2p.get(p2p.get_actor("faults-after-kill").where.remote(), timeout=60)
    took("new_actor")
    out["value"] = run_graph(mapper, reducer, 0, args.maps, args.group, None, 0, False)
    took("graph")
    del fresh, keeper
    emit("table", **out)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        sys.exit(1)
