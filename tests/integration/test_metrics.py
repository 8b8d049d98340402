"""User metrics (`util.metrics`) and the Prometheus text the peers serve: the API's checks, the format
(escaping, histogram buckets), and a scrape of an embedded peer's dashboard after tasks updated metrics."""

from __future__ import annotations

import json

import pytest

from itest_util import run_driver
from p2pcompute.dashboard.metrics_text import parse, render
from p2pcompute.errors import InvalidArgumentError
from p2pcompute.util import metrics

pytestmark = pytest.mark.integration


def test_metric_api_checks_its_input():
    with pytest.raises(InvalidArgumentError, match="metric name"):
        metrics.Counter("bad name")
    c = metrics.Counter("tm_requests", "requests", tag_keys=("route",))
    with pytest.raises(InvalidArgumentError, match="only goes up"):
        c.inc(-1, {"route": "/"})
    with pytest.raises(InvalidArgumentError, match="needs a value for tag"):
        c.inc(1)
    with pytest.raises(InvalidArgumentError, match="has no tag"):
        c.inc(1, {"route": "/", "verb": "GET"})
    with pytest.raises(InvalidArgumentError, match="already exists as a counter"):
        metrics.Gauge("tm_requests")
    with pytest.raises(InvalidArgumentError, match="increasing"):
        metrics.Histogram("tm_latency_bad", boundaries=[1, 0.5])
    c.set_default_tags({"route": "/home"})
    c.inc(2)
    c.inc(1, {"route": "/x"})
    again = metrics.Counter("tm_requests", "requests", tag_keys=("route",))  # defined again: same series
    again.inc(1, {"route": "/x"})
    snap = metrics.snapshot()["tm_requests"]
    assert sorted(map(tuple, (tuple(k) + (v,) for k, v in snap["values"]))) == [("/home", 2.0), ("/x", 2.0)]


def test_text_format_round_trips_and_sums_processes():
    h = {"kind": "histogram", "description": "latency", "tag_keys": [], "boundaries": [0.1, 1.0],
         "values": [[[], [1, 2, 1, 3.5]]]}
    c = {"kind": "counter", "description": 'say "hi"\nthere', "tag_keys": ["who"],
         "values": [[['a"b\\c'], 2.0]]}
    report = {"peer": "p1", "peer_metrics": {"counters": {"tasks_finished:task": 5, "membership:alive": 2,
                                                          "lease_grants": 9, "table_leader_changes": 1},
                                             "transfer_bytes_sent": 4096,
                                             "store_used_bytes": 10, "members_by_state": {"alive": 2},
                                             "table_role": "leader"},
              "processes": {"w1": {"metrics": {"tm_lat": h, "tm_hits": c}, "worker_queue": 2},
                            "w2": {"metrics": {"tm_lat": h, "tm_hits": c}, "worker_queue": 1,
                                   "owned_pending": {"PENDING_ARGS_AVAIL": 3}}}}
    text = render([report])
    assert "# TYPE tm_lat histogram" in text and "# TYPE p2p_tasks_total counter" in text
    s = parse(text)
    assert s[("p2p_tasks_total", (("kind", "task"), ("peer", "p1"), ("state", "finished")))] == 5
    assert s[("p2p_lease_grants_total", (("peer", "p1"),))] == 9
    assert s[("p2p_table_leader", (("peer", "p1"),))] == 1
    assert s[("p2p_table_leader_changes_total", (("peer", "p1"),))] == 1
    assert s[("p2p_tasks_pending", (("peer", "p1"), ("state", "PENDING_ARGS_AVAIL")))] == 3
    assert s[("p2p_tasks_pending", (("peer", "p1"), ("state", "SUBMITTED_TO_WORKER")))] == 0
    assert s[("p2p_worker_queued_tasks", (("peer", "p1"),))] == 3
    assert s[("p2p_transfer_sent_bytes_total", (("peer", "p1"),))] == 4096
    assert s[("tm_hits", (("peer", "p1"), ("who", 'a"b\\c')))] == 4  # two processes summed
    buckets = [s[("tm_lat_bucket", (("le", le), ("peer", "p1")))] for le in ("0.1", "1", "+Inf")]
    assert buckets == [2, 6, 8]  # cumulative
    assert s[("tm_lat_count", (("peer", "p1"),))] == 8 and s[("tm_lat_sum", (("peer", "p1"),))] == 7.0


def test_embedded_dashboard_serves_task_and_user_metrics(tmp_path):
    out = run_driver("""
        import json, urllib.request
        import p2pcompute as p2p
        from p2pcompute.runtime.observe import dashboard_url
        from p2pcompute.util.metrics import Counter, Histogram
        p2p.init(num_cpus=2, include_dashboard=True, dashboard_port=0)

        @p2p.remote
        def work(i):
            Counter("tm_work_done", "work items", tag_keys=("parity",)).inc(1, {"parity": str(i % 2)})
            Histogram("tm_work_size", "sizes", boundaries=[5]).observe(i)
            return i

        assert sum(p2p.get([work.remote(i) for i in range(10)])) == 45
        Counter("tm_driver_side", "from the driver").inc(3)
        import time
        from p2pcompute.dashboard.metrics_text import parse
        deadline = time.monotonic() + 20
        while True:  # finished attempts reach the peer within a quarter of a second
            text = urllib.request.urlopen(dashboard_url() + "/metrics").read().decode()
            s = parse(text)
            done = sum(v for (n, l), v in s.items() if n == "p2p_tasks_total" and ("state", "finished") in l)
            if done >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(json.dumps({"done": done, "text": text}))
    """, tmp_path).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["done"] == 10
    s = parse(got["text"])
    by_parity = {dict(l)["parity"]: v for (n, l), v in s.items() if n == "tm_work_done"}
    assert by_parity == {"0": 5, "1": 5}
    assert sum(v for (n, l), v in s.items() if n == "tm_work_size_count") == 10
    assert [v for (n, _), v in s.items() if n == "tm_driver_side"] == [3]
