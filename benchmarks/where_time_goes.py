"""Where the time of a one-at-a-time task goes: CPU per call, by process and thread.

    python benchmarks/where_time_goes.py                     # 3,000 sequential get(f.remote()), one local peer
    python benchmarks/where_time_goes.py --actor --calls 5000
    python benchmarks/where_time_goes.py --compare /tmp/old-checkout   # the same loop on another checkout, in turns

Runs a loop of sequential calls on a fresh local cluster (`init(num_cpus=2)`) and reads, before and after,
the CPU time of every thread of the driver and of every process the cluster started (the peer, its workers)
from /proc, through psutil. It prints the calls per second and, per thread, the CPU microseconds it spent
per call, plus how many passes the driver's loop made per call. A thread that waits costs nothing here, so
the table shows the work; the gap between the sum and the wall time per call is time spent waiting for the
other side or for a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(calls: int, actor: bool) -> dict:
    import psutil

    import p2pcompute as p2p
    from p2pcompute import api

    p2p.init(num_cpus=2)

    @p2p.remote
    def noop(x=None):
        return x

    @p2p.remote
    class Echo:
        def call(self, x=None):
            return x

    echo = Echo.remote()
    call = (lambda i: p2p.get(echo.call.remote(i))) if actor else (lambda i: p2p.get(noop.remote(i)))
    for i in range(300):  # warm: workers started, leases held, code cached
        call(i)
    rt = api._runtime()
    transport = rt.transport
    passes = [0]
    poll = transport.poll

    def counting_poll(*args, **kwargs):
        passes[0] += 1
        return poll(*args, **kwargs)

    transport.poll = counting_poll
    me = psutil.Process()
    procs = [me] + me.children(recursive=True)

    def snapshot() -> dict:
        out = {}
        for proc in procs:
            try:
                name = " ".join(proc.cmdline()[1:3])[-40:]
                for t in proc.threads():
                    out[(proc.pid, t.id)] = (name, t.user_time + t.system_time)
            except psutil.Error:
                pass
        return out

    names = _thread_names()
    before = snapshot()
    passes[0] = 0
    start = time.perf_counter()
    for i in range(calls):
        call(i)
    wall = time.perf_counter() - start
    after = snapshot()
    rows = []
    for key, (name, cpu) in after.items():
        used = cpu - before.get(key, (name, 0.0))[1]
        if used <= 0:
            continue
        pid, tid = key
        if pid == me.pid:
            who = "driver: main thread" if tid == pid else f"driver: {names.get(tid, 'libzmq I/O thread')}"
        else:
            who = f"{name} (pid {pid}): {'main thread' if tid == pid else 'thread ' + str(tid)}"
        rows.append((who, used / calls * 1e6))
    rows.sort(key=lambda r: -r[1])
    p2p.shutdown()
    return {"calls_per_s": calls / wall, "wall_us": wall / calls * 1e6, "passes_per_call": passes[0] / calls,
            "threads": rows}


def _thread_names() -> dict:
    import threading
    return {t.native_id: t.name for t in threading.enumerate()}


def _report(label: str, r: dict) -> str:
    lines = [f"## {label}: {r['calls_per_s']:,.0f} calls/s, {r['wall_us']:.0f} us per call, "
             f"{r['passes_per_call']:.2f} driver loop passes per call",
             "| thread | CPU per call |", "|---|---|"]
    total = 0.0
    for who, us in r["threads"]:
        if us >= 3:
            lines.append(f"| {who} | {us:.0f} us |")
        total += us
    lines.append(f"| all | {total:.0f} us |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--actor", action="store_true", help="sequential actor calls instead of tasks")
    parser.add_argument("--compare", action="append", default=[], help="another checkout to run in turns")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls, args.actor)))
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [here] + [os.path.abspath(t) for t in args.compare]
    for rnd in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, os.path.join(here, "benchmarks", "where_time_goes.py"), "--child",
                   "--calls", str(args.calls)] + (["--actor"] if args.actor else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=600)
            if out.returncode != 0:
                print(f"{tree}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            commit = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            print(_report(f"round {rnd + 1}, {tree} ({commit})", r))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
