"""Scheduling across three real peers on loopback (issue 4), driven the way a user would.

Peers are started with the `p2p` command line, each with its own --home and port; drivers are separate
interpreters attached to one peer by address (`sched_util`). One cluster serves the whole module:

    peer  --num-cpus  --resources
    A     1
    B     1           {"tpu": 2}
    C     1

Why one CPU each: three one-CPU peers are 3 CPUs on a 2-core machine, which is fine because the tasks mostly
sleep; equal CPUs make an even share the expected outcome; and a one-CPU peer is "full" after one lease, so
spillback and spreading are exercised from the first tasks on. Tests that need a fourth peer (a peer that
joins with a missing resource, a peer that left) start it themselves and stop it again, so the others always
see exactly A, B and C alive.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from cluster_util import Cluster, Peer, p2p, wait_for
from sched_util import alive_ids, cpu_available, result_of, rss_bytes, run_driver, start_driver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Reclaiming a dead holder's lease is one pidfd event and one message; the rest is `p2p status` itself
# (~0.3 s) and a loaded 2-core machine shared with other test runs.
RECLAIM_BOUND_S = 5.0
# From a fitting peer joining to a waiting task running: gossip (100 ms), a respill tick (100 ms), the spilled
# request, and a worker start (~0.3 s); measured ~1.5 s including the `p2p join` command.
JOIN_TO_RUN_BOUND_S = 10.0
# A peer daemon's resident memory may move by allocator noise and a few buffers, never by the backlog: 100,000
# queued tasks grow the driver by ~210 MB (measured), so a quarter of that on a peer would be the backlog leaking
# there. Measured growth: under 1 MB.
PEER_RSS_GROWTH_MAX_BYTES = 50 << 20


class Three:
    """The module's cluster and its three peers by name."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.a, self.b, self.c = cluster.peers[:3]
        self.ids = {p.peer_id for p in (self.a, self.b, self.c)}

    def start_extra(self, resources: str | None = None) -> Peer:
        peer = self.cluster.start(num_cpus=1, resources=resources)
        wait_for(lambda: alive_ids(self.a) >= self.ids | {peer.peer_id}, 20, f"A to see {peer.peer_id} alive")
        return peer

    def stop_extra(self, peer: Peer) -> str:
        """Stop an extra peer gracefully; returns its id (its state file is gone afterwards)."""
        pid, peer_id = peer.pid, peer.peer_id
        p2p("stop", "--home", peer.home)
        # Stopped for good: stop_all must not signal a pid that may since belong to someone else.
        self.cluster.pids.remove(pid)
        wait_for(lambda: self.a.states().get(peer_id) == "left", 10, f"A to see {peer_id} left")
        return peer_id


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    cluster = Cluster(str(tmp_path_factory.mktemp("sched")))
    try:
        cluster.start(num_cpus=1)
        cluster.start(num_cpus=1, resources='{"tpu": 2}')
        cluster.start(num_cpus=1)
        ids = {p.peer_id for p in cluster.peers}
        for peer in cluster.peers:
            # Each peer must also have heard the others' resource views, or its first spills have no targets.
            wait_for(lambda: alive_ids(peer) == ids and all(n["Resources"] for n in peer.status()["nodes"]),
                     20, f"{peer.peer_id} to see all three alive with their resources")
        yield Three(cluster)
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def departed_id(three) -> str:
    """The id of a peer that was a member and has left the cluster."""
    return three.stop_extra(three.start_extra())


UNKNOWN_ID = "0123456789ab"  # the shape of a peer id, never a member


# ---- 1. spreading ---------------------------------------------------------------------------------------


def test_2000_tasks_from_a_driver_on_one_peer_run_on_all_three_with_fair_shares(three, tmp_path):
    # 2 ms of work per task: long against the per-task cost, so that using the other peers pays.
    counts, _ = run_driver(three.cluster, three.a, """
        @p2p.remote
        def where():
            time.sleep(0.002)
            return p2p.get_runtime_context().node_id

        report(collections.Counter(p2p.get([where.remote() for _ in range(2000)], timeout=45)))
    """, tmp_path, timeout_s=55)
    print(f"\n2,000 tasks from a driver on A: {counts}")
    assert set(counts) == three.ids and sum(counts.values()) == 2000
    # Equal CPUs: a third each is ideal (measured 33% +- 1%); 15% still means every peer took real work.
    for peer_id, n in counts.items():
        assert n >= 300, f"peer {peer_id} ran only {n} of 2,000 tasks: {counts}"


# ---- 2. custom resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("driver_peer", ["a", "b", "c"])
def test_tasks_needing_a_custom_resource_run_only_where_it_exists(three, tmp_path, driver_peer):
    where, _ = run_driver(three.cluster, getattr(three, driver_peer), """
        @p2p.remote(resources={"tpu": 1})
        def tpu_task():
            time.sleep(0.01)
            return p2p.get_runtime_context().node_id

        @p2p.remote
        def plain():
            time.sleep(0.01)
            return p2p.get_runtime_context().node_id

        tpu = [tpu_task.remote() for _ in range(20)]
        other = [plain.remote() for _ in range(20)]
        report({"tpu": collections.Counter(p2p.get(tpu, timeout=30)),
                "plain": collections.Counter(p2p.get(other, timeout=30))})
    """, tmp_path)
    assert where["tpu"] == {three.b.peer_id: 20}
    assert set(where["plain"]) <= three.ids  # the plain tasks are free to go anywhere


# ---- 3. locality ------------------------------------------------------------------------------------------


_LOCALITY_ROUNDS = """
    import numpy as np
    B = {b!r}

    @p2p.remote(num_returns=2, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=B, soft=False))
    def produce(seed):
        return np.full(50 << 20, seed, dtype=np.uint8), p2p.get_runtime_context().node_id

    @p2p.remote
    def consume(arr):
        return int(arr[::4096].sum()), p2p.get_runtime_context().node_id

    rounds = []
    for seed in (1, 2, 3):
        arr, made_on = produce.remote(seed)
        made_on = p2p.get(made_on, timeout=30)
        if {handshake}:
            print("PRODUCED " + p2p.get_runtime_context().worker_id, flush=True)
            assert sys.stdin.readline().strip() == "GO"
        total, ran_on = p2p.get(consume.remote(arr), timeout=30)
        rounds.append({{"made_on": made_on, "ran_on": ran_on, "sum": total}})
        del arr  # freed at once, so B's store holds one 50 MB object at a time
    report(rounds)
"""


def _check_rounds(three, rounds) -> None:
    assert [r["made_on"] for r in rounds] == [three.b.peer_id] * 3
    assert [r["sum"] for r in rounds] == [seed * (50 << 20) // 4096 for seed in (1, 2, 3)]
    assert [r["ran_on"] for r in rounds] == [three.b.peer_id] * 3, rounds


def test_a_task_runs_on_the_peer_holding_its_50mb_argument(three, tmp_path):
    # The ordinary pattern: the consumer is submitted as soon as the producer is done.
    rounds, _ = run_driver(three.cluster, three.a, _LOCALITY_ROUNDS.format(b=three.b.peer_id, handshake=False),
                           tmp_path)
    _check_rounds(three, rounds)


def test_a_task_runs_on_the_peer_holding_its_50mb_argument_when_that_peer_is_idle(three, tmp_path):
    # The same rounds, but each consumer is submitted only once B (by its own account) holds no lease of this
    # driver: this isolates the locality-aware first lease request from B's spill decision.
    b = three.b
    driver = start_driver(three.cluster, three.a, _LOCALITY_ROUNDS.format(b=b.peer_id, handshake=True),
                          tmp_path)
    try:
        for _ in range(3):
            holder = driver.read_line("PRODUCED ", 30)
            wait_for(lambda: not [l for l in b.status()["leases"] if l["holder"] == holder]
                     and cpu_available(b) == 1.0, 10, "B to have the producer's lease back")
            driver.send("GO")
        code, out, err = driver.finish(30)
        assert code == 0, err
    finally:
        driver.kill()
    _check_rounds(three, result_of(out))


# ---- 4. SPREAD ---------------------------------------------------------------------------------------------


_SPREAD_BATCHES = """
    @p2p.remote(scheduling_strategy="SPREAD")
    def where():
        time.sleep({sleep_s})
        return p2p.get_runtime_context().node_id

    report([collections.Counter(p2p.get([where.remote() for _ in range(30)], timeout=30))
            for _ in range({batches})])
"""


def test_spread_puts_30_tasks_10_10_10(three, tmp_path):
    # Tasks that return at once: SPREAD is a per-task promise, whatever the tasks' length. Three batches in
    # one driver, each of which must be exact.
    batches, _ = run_driver(three.cluster, three.a, _SPREAD_BATCHES.format(sleep_s=0, batches=3), tmp_path)
    print(f"\nSPREAD, 30 instant tasks, 3 batches: {[sorted(b.values()) for b in batches]}")
    for batch in batches:
        assert batch == {peer_id: 10 for peer_id in three.ids}, batches


def test_spread_uses_every_peer_for_tasks_that_take_a_while(three, tmp_path):
    # What the product does promise today: with tasks long enough that each lease runs them one at a time,
    # every peer gets a fair part. Measured 10/10/10 every time (at 0.1 s, 9/10/11 once in six); a worker that
    # boots 1 s late on a loaded machine costs its peer ~5 tasks of 0.2 s, hence at least 5 of 30 each.
    batches, _ = run_driver(three.cluster, three.a, _SPREAD_BATCHES.format(sleep_s=0.2, batches=1), tmp_path)
    counts = batches[0]
    print(f"\nSPREAD, 30 tasks of 0.2 s: {counts}")
    assert set(counts) == three.ids and sum(counts.values()) == 30
    assert min(counts.values()) >= 5, counts


# ---- 5. node affinity ----------------------------------------------------------------------------------------


def test_hard_node_affinity_runs_every_task_on_the_named_peer(three, tmp_path):
    where, _ = run_driver(three.cluster, three.a, f"""
        @p2p.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id={three.c.peer_id!r}, soft=False))
        def where():
            time.sleep(0.01)
            return p2p.get_runtime_context().node_id

        report(collections.Counter(p2p.get([where.remote() for _ in range(20)], timeout=30)))
    """, tmp_path)
    assert where == {three.c.peer_id: 20}


@pytest.mark.parametrize("target", ["unknown", "departed"])
def test_soft_node_affinity_to_a_missing_peer_runs_elsewhere(three, departed_id, tmp_path, target):
    node_id = UNKNOWN_ID if target == "unknown" else departed_id
    where, _ = run_driver(three.cluster, three.a, f"""
        @p2p.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id={node_id!r}, soft=True))
        def where():
            time.sleep(0.01)
            return p2p.get_runtime_context().node_id

        report(collections.Counter(p2p.get([where.remote() for _ in range(10)], timeout=30)))
    """, tmp_path)
    assert sum(where.values()) == 10 and set(where) <= three.ids


@pytest.mark.parametrize("target", ["unknown", "departed"])
def test_hard_node_affinity_to_a_missing_peer_never_runs_and_get_times_out(three, departed_id, tmp_path, target):
    node_id = UNKNOWN_ID if target == "unknown" else departed_id
    outcome, _ = run_driver(three.cluster, three.a, f"""
        @p2p.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id={node_id!r}, soft=False))
        def where():
            return p2p.get_runtime_context().node_id

        try:
            report({{"ran_on": p2p.get(where.remote(), timeout=3)}})
        except p2p.exceptions.GetTimeoutError as exc:
            report({{"timeout": str(exc)}})
    """, tmp_path)
    assert "timeout" in outcome, f"a task with hard affinity to {target} peer {node_id} ran on {outcome}"
    assert "timed out" in outcome["timeout"]


# ---- 6. infeasible shapes -------------------------------------------------------------------------------------


def test_an_infeasible_task_waits_with_one_warning_then_runs_when_a_fitting_peer_joins(three, tmp_path):
    a = three.a
    driver = start_driver(three.cluster, a, """
        @p2p.remote(resources={"gpu_x": 1})
        def where():
            return p2p.get_runtime_context().node_id

        refs = [where.remote() for _ in range(3)]
        try:
            p2p.get(refs, timeout=1)
            print("WAITING " + json.dumps(None), flush=True)
        except p2p.exceptions.GetTimeoutError as exc:
            print("WAITING " + json.dumps(str(exc)), flush=True)
        report(p2p.get(refs, timeout=40))
    """, tmp_path)
    joined = None
    try:
        timed_out = json.loads(driver.read_line("WAITING ", 30))
        assert timed_out and "timed out" in timed_out, "get(timeout=1) returned although no peer has gpu_x"
        # The driver's peer holds the waiting requests and lists them as demand that fits no peer.
        status = a.status()
        mine = next(n for n in status["nodes"] if n["NodeID"] == a.peer_id)
        demand = mine["PendingDemand"]
        assert demand and all("gpu_x" in d["shape"] and d["infeasible"] for d in demand), demand
        text = p2p("status", "--home", a.home).stdout
        assert "pending demand" in text and "fits no peer" in text, text

        t0 = time.monotonic()
        joined = three.start_extra(resources='{"gpu_x": 1}')
        code, out, err = driver.finish(JOIN_TO_RUN_BOUND_S + 30)
        elapsed_s = time.monotonic() - t0
        assert code == 0, err
        print(f"\ninfeasible tasks all ran {elapsed_s:.2f} s after `p2p join` of a peer with gpu_x began")
        assert result_of(out) == [joined.peer_id] * 3
        assert elapsed_s < JOIN_TO_RUN_BOUND_S
        warnings = [line for line in err.splitlines() if "no peer has that much" in line]
        assert len(warnings) == 1 and "gpu_x" in warnings[0], err
    finally:
        driver.kill()
        if joined is not None:
            three.stop_extra(joined)


# ---- 7. leases die with their holder ------------------------------------------------------------------------


def test_a_killed_driver_loses_its_leases_on_another_peer(three, tmp_path):
    a, b = three.a, three.b
    driver = start_driver(three.cluster, a, f"""
        @p2p.remote(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id={b.peer_id!r}, soft=False))
        def long_task():
            time.sleep(300)

        refs = [long_task.remote() for _ in range(3)]  # one runs on B's only CPU, two wait there
        print("DRIVER " + p2p.get_runtime_context().worker_id, flush=True)
        p2p.get(refs)
    """, tmp_path)
    try:
        holder = driver.read_line("DRIVER ", 30)
        assert holder.startswith(a.peer_id), holder

        def held():
            status = b.status()
            return [l for l in status["leases"] if l["holder"] == holder], status

        wait_for(lambda: held()[0], 20, "B to lease its worker to the driver")
        leases, status = held()
        assert cpu_available(b) == 0
        worker_pids = [p["pid"] for p in status["processes"] if p["id"] in {l["worker"] for l in leases}]
        assert worker_pids

        os.kill(driver.pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: cpu_available(b) == 1.0, RECLAIM_BOUND_S, "B to count its CPU free again")
        reclaimed_s = time.monotonic() - t0
        status = b.status()
        assert not [l for l in status["leases"] if l["holder"] == holder]
        assert not [w for w in status["waiting"] if w["holder"] == holder]
        # The worker may still be running the dead driver's task: it is stopped, not handed to someone else.
        wait_for(lambda: not any(_running(pid) for pid in worker_pids), RECLAIM_BOUND_S,
                 "the leased worker to be stopped")
        print(f"\nB counted its CPU free {reclaimed_s:.2f} s after the driver's SIGKILL")
    finally:
        driver.kill()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- 8. backpressure ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_backlog_of_100k_tasks_stays_in_the_driver_not_in_the_peers(three, tmp_path):
    peers = (three.a, three.b, three.c)
    before = {p.peer_id: rss_bytes(p.pid) for p in peers}
    driver = start_driver(three.cluster, three.a, """
        import psutil

        @p2p.remote
        def tiny(i):
            return i

        rss0 = psutil.Process().memory_info().rss
        t0 = time.monotonic()
        refs = [tiny.remote(i) for i in range(100_000)]
        submit_s = time.monotonic() - t0
        ready, not_ready = p2p.wait(refs, num_returns=len(refs), timeout=0)
        print("BACKLOG " + json.dumps(len(not_ready)), flush=True)
        driver_growth = psutil.Process().memory_info().rss - rss0
        # In chunks: one get() of 100,000 refs rescans every ref on each completion (quadratic; see the
        # report), which is not what this test is about.
        for k in range(0, len(refs), 10_000):
            assert p2p.get(refs[k:k + 10_000], timeout=100) == list(range(k, k + 10_000))
        report({"submit_s": submit_s, "total_s": time.monotonic() - t0, "driver_growth": driver_growth})
    """, tmp_path)
    try:
        backlog = int(driver.read_line("BACKLOG ", 60))
        # The queue must be really there for the test to mean anything (measured ~90,000 at this point).
        assert backlog >= 10_000, f"only {backlog} tasks were still queued after submission"
        waiting = {p.peer_id: len(p.status()["waiting"]) for p in peers}
        peak = dict(before)
        deadline = time.monotonic() + 120
        while driver.proc.poll() is None and time.monotonic() < deadline:
            for p in peers:
                peak[p.peer_id] = max(peak[p.peer_id], rss_bytes(p.pid))
            time.sleep(0.25)  # sampling other processes' memory while the driver drains; bounded above
        code, out, err = driver.finish(10)
        assert code == 0, err
        result = result_of(out)
        growth_mb = {i: round((peak[i] - before[i]) / 2**20, 1) for i in peak}
        print(f"\n100,000 tasks: submitted in {result['submit_s']:.1f} s, all done in {result['total_s']:.1f} s; "
              f"{backlog} queued after submission; lease requests waiting per peer then {waiting}; "
              f"peak peer RSS growth {growth_mb} MB; driver RSS growth "
              f"{result['driver_growth'] / 2**20:.0f} MB")
        # A driver keeps its backlog: only its few pipelined lease requests (max_pending_requests = 4) wait.
        assert all(n <= 4 for n in waiting.values()), waiting
        for peer_id in peak:
            assert peak[peer_id] - before[peer_id] < PEER_RSS_GROWTH_MAX_BYTES, growth_mb
    finally:
        driver.kill()
