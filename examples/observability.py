"""Watching a run: the state API, a progress bar, user metrics, the timeline and the dashboard.

    python examples/observability.py        # prints task counts, a failure, metrics; writes timeline.json
"""

import json
import time
import urllib.request

import p2pcompute as p2p
from p2pcompute.runtime.observe import dashboard_url
from p2pcompute.util import progress, state
from p2pcompute.util.metrics import Counter, Histogram

p2p.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
print("dashboard:", dashboard_url())


@p2p.remote
def simulate(seed):
    start = time.perf_counter()
    total = sum((seed * k) % 7 for k in range(200_000))
    Counter("sim_runs", "simulations run", tag_keys=("parity",)).inc(1, {"parity": str(seed % 2)})
    Histogram("sim_seconds", "time per simulation", boundaries=[0.01, 0.05, 0.1, 0.5]).observe(
        time.perf_counter() - start)
    return total


@p2p.remote(max_retries=0)
def flaky():
    raise RuntimeError("this one fails on purpose")


results = progress([simulate.remote(s) for s in range(24)], desc="simulations", force=True)
print("sum of results:", sum(results))
try:
    p2p.get(flaky.remote())
except RuntimeError:
    pass

deadline = time.monotonic() + 10
while state.summarize_tasks()["cluster"]["total_tasks"] < 25 and time.monotonic() < deadline:
    time.sleep(0.1)  # finished attempts reach the peer within a quarter of a second
print(json.dumps(state.summarize_tasks()["cluster"]["state_counts"]))
failure = state.list_tasks([("state", "=", "FAILED")], detail=True)[0]
print("failed:", failure["name"], "-", failure["error_message"].strip().splitlines()[-1])
metrics = urllib.request.urlopen(dashboard_url() + "/metrics").read().decode()
print("\n".join(line for line in metrics.splitlines() if line.startswith(("sim_runs", "p2p_tasks_total"))))
p2p.timeline("timeline.json")
print("wrote timeline.json: open it in https://ui.perfetto.dev")
