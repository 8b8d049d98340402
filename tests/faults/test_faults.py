"""Fault injection with real processes: four peers on loopback, a map-reduce job, and a peer that dies or stops.

Each test starts its own four peers (`p2p start` + three `p2p join`, 1 CPU each, each with its own home and
port on 127.0.0.1) and runs drivers as subprocesses (`fault_driver.py`), which attach to one peer by address
and report progress as JSON lines. The job (`mapreduce_job.py`): map tasks return 1 MiB numpy arrays, reduce
tasks take `GROUP` map outputs as arguments and return a small weighted sum, the driver combines them; the
test computes the exact expected value with numpy alone.

Size: the issue asks for 5,000 tasks. The CI machine has 2 cores shared with other suites and 20 minutes for
everything, so by default the graph has about `P2P_FAULT_TASKS` = 2,000 tasks (1,600 maps + 400 reduces,
1.6 GB of intermediate objects in all); `P2P_FAULT_TASKS=5000` runs the issue's full size (4,000 + 1,000).
Test 3 runs waves of 200 maps + 50 reduces (`P2P_FAULT_WAVE_MAPS`) until told to stop, ~2,000 tasks in all.

A "machine" is a peer's process group (peer, zygote, workers). A SIGKILLed peer's store directory on
/dev/shm would survive it on this one host; the tests delete it right after the kill, as a real machine's
loss would, so lost objects must be rebuilt from lineage rather than read from the dead peer's memory.

Every wait is a deadline on a condition. Run with `-s` to see the measured recovery times.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import pytest

from cluster_util import p2p
from fault_util import (Driver, DriverError, EventTimeout, FaultCluster, RecoveryTooSlow, WorkFailed,
                        declared_dead, keep_logs, start_four, stored_objects, transitions, wait_until)
from mapreduce_job import expected_result, read_exec_log, split
from p2pcompute.net.membership_config import MembershipConfig, detection_bound_ms

pytestmark = [pytest.mark.integration]

TOTAL_TASKS = int(os.environ.get("P2P_FAULT_TASKS", "2000"))
GROUP = 4  # maps per reduce
N_MAPS, N_REDUCES = split(TOTAL_TASKS, GROUP)
# Generous on a loaded 2-core machine: the fault-free job takes ~5 s at 2,000 tasks, ~13 s at 5,000.
JOB_DEADLINE_S = 60 + TOTAL_TASKS * 0.03
DETECTION_BOUND_S = detection_bound_ms(MembershipConfig(), 4) / 1000
SLACK_S = 5.0  # scheduling noise on a loaded 2-core machine, on top of a protocol's own bound
REJOIN_DEADLINE_S = 60.0
RECOVERY_SLACK_S = 15.0  # rebuilding and rescheduling on a loaded machine, beyond detection and redone work
SMALL_MAPS = 80  # a quick graph for the checks after a fault: 80 maps + 20 reduces
WAVE_MAPS = int(os.environ.get("P2P_FAULT_WAVE_MAPS", "200"))  # test 3's waves: 200 maps + 50 reduces


@pytest.fixture(scope="module")
def expected() -> int:
    return expected_result(0, N_MAPS, GROUP)


@pytest.fixture
def four(tmp_path):
    # Homes hold Unix sockets, whose paths must stay short: not under pytest's long tmp_path.
    base = tempfile.mkdtemp(prefix="p2pf-", dir="/tmp")
    try:
        cluster = start_four(base)
        try:
            yield cluster
        finally:
            cluster.stop_all()
    finally:
        keep_logs(base, tmp_path)  # pytest keeps the last few tmp_paths: the logs outlive the homes
        shutil.rmtree(base, ignore_errors=True)


def job_args(exec_log=None, *extra: str) -> list[str]:
    args = ["--maps", str(N_MAPS), "--group", str(GROUP), *extra]
    return args + (["--exec-log", str(exec_log)] if exec_log else [])


def maps_done(exec_log) -> int:
    """How many distinct maps have run so far."""
    return len({i for i, _node, _t in read_exec_log(str(exec_log))})


def run_clean_job(cluster: FaultCluster, peer, tmp_path, expected: int) -> float:
    """The same job without faults, on the same (warm) cluster: the figure recovery is compared with."""
    driver = Driver(peer, cluster.token_file, "job", *job_args(), log_path=str(tmp_path / "clean-driver.log"))
    try:
        driver.next_event({"ready"}, 60)
        result = driver.next_event({"result"}, JOB_DEADLINE_S)
        assert result["value"] == expected
        assert driver.finish() == 0
        return result["elapsed_s"]
    finally:
        driver.kill()


# ---- 1. SIGKILL of another peer mid-job ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_another_peer_mid_job_gives_the_exact_result(four, tmp_path, expected):
    driver_peer = four.peers[1]
    clean_s = run_clean_job(four, driver_peer, tmp_path, expected)

    exec_log = tmp_path / "maps.log"
    driver = Driver(driver_peer, four.token_file, "job", *job_args(exec_log),
                    log_path=str(tmp_path / "driver.log"))
    try:
        driver.next_event({"ready"}, 60)
        t_submit = time.monotonic()
        # Mid-job: 70% of the maps have run, the first reduces run, and most wait for some of their arguments.
        # The victim: whichever of peers 2 and 3 has run more of the maps so far (killing a peer that had no
        # share of the work would test nothing).
        candidates = {p.peer_id: p for p in four.peers[2:]}

        def mid_job():
            runs = read_exec_log(str(exec_log))
            done = len({i for i, _node, _t in runs})
            if done < N_MAPS * 7 // 10:
                return None
            counts = {pid: sum(1 for _i, node, _t in runs if node == pid) for pid in candidates}
            best = max(counts, key=counts.get)
            return (done, best) if counts[best] else None

        at_kill, victim_id = wait_until(mid_job, JOB_DEADLINE_S, "70% of the maps to run, some on peer 2 or 3",
                                        interval_s=0.02)
        victim = candidates[victim_id]
        held = four.kill(victim)  # and its memory: its store directory goes too
        t_kill = time.monotonic()
        kill_wall = time.time()
        # Recovery costs detection plus redoing the lost work, which is at most the whole job again.
        bound_s = DETECTION_BOUND_S + 2 * clean_s + RECOVERY_SLACK_S
        try:
            result = driver.next_event({"result"}, bound_s)
        except EventTimeout as exc:
            print(f"\n[kill -9 mid-job] not done {bound_s:.1f} s after the kill (clean run {clean_s:.1f} s)")
            raise RecoveryTooSlow(f"the job did not finish within {bound_s:.1f} s of the kill; it takes "
                                  f"{clean_s:.1f} s without faults\n{exc}") from None
        except DriverError as exc:
            print(f"\n[kill -9 mid-job] the job failed {time.monotonic() - t_kill:.1f} s after the kill "
                  f"(its store held {held} objects; clean run {clean_s:.1f} s): "
                  f"{driver.seen[-1].get('error', '')[:100]}")
            raise WorkFailed(f"the job failed after the kill:\n{exc}") from None
        t_done = time.monotonic()
        assert result["value"] == expected, "the job's result differs from the one computed without the cluster"
        assert driver.finish() == 0
    finally:
        driver.kill()

    executions = read_exec_log(str(exec_log))
    ran_on_victim = {i for i, node, _t in executions if node == victim_id}
    rerun = {i for i, node, t in executions if t > kill_wall and node != victim_id} & ran_on_victim
    recovery_s = t_done - t_kill
    print(f"\n[kill -9 mid-job] {N_MAPS} maps + {N_REDUCES} reduces, driver on peer 1, killed peer {victim_id} after "
          f"{at_kill} maps ({t_kill - t_submit:.1f} s in); its store held {held} objects, "
          f"deleted. Job done {recovery_s:.1f} s after the kill, {t_done - t_submit:.1f} s in all vs "
          f"{clean_s:.1f} s without the fault; {result['rebuilds']} objects rebuilt from lineage, "
          f"{len(executions) - N_MAPS} extra map runs ({len(rerun)} of maps that had run on the dead peer).")
    # The job may finish before the death is declared (the lost work was redone elsewhere): wait for it.
    others = [p for p in four.peers if p.peer_id != victim_id]
    wait_until(lambda: all(p.states().get(victim_id) == "dead" for p in others),
               DETECTION_BOUND_S + SLACK_S, "every other peer to mark the victim dead")
    wrongly_dead = {dead for _observer, dead in declared_dead(four) if dead != victim_id}
    assert not wrongly_dead, f"live peers were declared dead: {wrongly_dead}"
    # The fault really hit the job: the dead peer held map outputs, and some had to be made again.
    assert held > 0, "the victim held no objects at the kill: the test did not exercise lost objects"
    assert rerun, "no map that had run on the dead peer was run again: lineage was not exercised"


# ---- 2. SIGSTOP past the failure timeout, then SIGCONT: the peer is fenced ----------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigstop_past_the_failure_timeout_then_sigcont(four, tmp_path, expected):
    driver_peer, paused = four.peers[0], four.peers[3]
    paused_id = paused.peer_id
    others = four.peers[:3]
    exec_log = tmp_path / "maps.log"
    # 25 ms of work per map keeps the job running through the pause, so the resumed peer's workers come back
    # to tasks that were already given to others.
    driver = Driver(driver_peer, four.token_file, "job", *job_args(exec_log, "--work-ms", "25"),
                    log_path=str(tmp_path / "driver.log"))
    job_error = None
    try:
        driver.next_event({"ready"}, 60)
        t_submit = time.monotonic()
        wait_until(lambda: maps_done(exec_log) >= N_MAPS * 4 // 10, JOB_DEADLINE_S, "40% of the maps to run",
                   interval_s=0.02)
        four.pause(paused)  # the whole machine: peer, zygote and workers
        t_stop = time.monotonic()
        for peer in others:
            wait_until(lambda: peer.states().get(paused_id) == "dead", DETECTION_BOUND_S + SLACK_S,
                       f"{peer.peer_id} to declare the paused peer dead")
        t_dead = time.monotonic()
        # Past the failure timeout by any measure: every other peer has declared it dead, and the bound passed.
        while time.monotonic() - t_stop < DETECTION_BOUND_S:
            time.sleep(0.1)  # a pause of a stated length is the fault being injected, not a wait for a result
        t_cont, t_cont_wall = time.monotonic(), time.time()
        four.resume(paused)
        # Death is final: told it was declared dead, the resumed peer does not refute. It is fenced: it
        # exits (its processes' objects and leases are gone for the cluster) and would come back only as a
        # new peer. The others never see it alive again, and the job goes on without it.
        wait_until(lambda: not paused.alive(), REJOIN_DEADLINE_S, "the resumed peer to exit, fenced")
        t_gone = time.monotonic()
        with open(os.path.join(paused.home, "logs", "peer.log"), errors="replace") as f:
            assert "was declared dead by the cluster" in f.read(), "the fenced peer did not log why it exited"
        try:
            result = driver.next_event({"result"}, JOB_DEADLINE_S)
        except DriverError as exc:
            job_error, result = exc, None
        else:
            assert result["value"] == expected
            assert driver.finish() == 0
        t_done = time.monotonic()
    finally:
        driver.kill()
    for peer in others:
        states = peer.states()
        assert states.get(paused_id) == "dead", states
        assert {i for i, s in states.items() if s == "alive"} == {p.peer_id for p in others}, states
    back = [(observer, t) for t, observer, subject, state in transitions(four)
            if subject == paused_id and observer != paused_id and state in ("alive", "suspect") and t > t_cont_wall]
    assert not back, f"a death was undone: {back}"
    outcome = (f"job done {t_done - t_submit:.1f} s after submission ({t_done - t_cont:.1f} s after the SIGCONT), "
               f"{result['rebuilds']} objects rebuilt" if result else
               f"the job FAILED: {str(job_error).splitlines()[0][:160]}")
    print(f"\n[SIGSTOP {t_cont - t_stop:.1f} s] all others declared it dead {t_dead - t_stop:.1f} s after the stop "
          f"(bound {DETECTION_BOUND_S:.1f} s); fenced, it exited {t_gone - t_cont:.2f} s after the SIGCONT; "
          f"{outcome}")
    wrongly_dead = {dead for _observer, dead in declared_dead(four) if dead != paused_id}
    assert not wrongly_dead, f"live peers were declared dead: {wrongly_dead}"
    # `p2p join` on the same machine brings it back as a new peer, which serves: a driver attached to it runs
    # a job and uses the table.
    four.restart(paused, via=driver_peer)
    assert paused.peer_id != paused_id
    probe_log = tmp_path / "probe-maps.log"
    probe = Driver(paused, four.token_file, "probe", "--maps", str(SMALL_MAPS), "--group", str(GROUP),
                   "--exec-log", str(probe_log), log_path=str(tmp_path / "probe-driver.log"))
    try:
        out = probe.next_event({"probe"}, 120)
        assert out["kv"] == "here"
        assert out["value"] == expected_result(0, SMALL_MAPS, GROUP)
        assert probe.finish() == 0
    finally:
        probe.kill()
    ran_on = {node for _i, node, _t in read_exec_log(str(probe_log))}
    print(f"[SIGSTOP] a driver on the peer rejoined as {paused.peer_id} ran {SMALL_MAPS} maps on peers {sorted(ran_on)}")
    # Checked last, so that whatever else broke fails the test as itself.
    if job_error is not None:
        raise WorkFailed(f"the job failed across the pause:\n{job_error}")


# ---- 3. SIGKILL of the first peer while another peer's driver keeps submitting -------------------------------

def table_view(peer) -> dict:
    return peer.status().get("table") or {}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_of_the_first_peer_while_a_driver_elsewhere_keeps_submitting(four, tmp_path):
    first, driver_peer = four.peers[0], four.peers[1]
    first_id = first.peer_id
    survivors = four.peers[1:]
    # The first peer bootstrapped the replicated table: it is one of its (up to 3) replicas.
    view = wait_until(lambda: (lambda v: v if len(v.get("replicas", [])) == 3 and v.get("leader") else None)(
        table_view(driver_peer)), 30, "the table to have 3 replicas and a leader")
    assert first_id in view["replicas"], view
    exec_log = tmp_path / "maps.log"
    # 20 ms of work per map spreads each wave over all four peers, the first one included.
    waves = Driver(driver_peer, four.token_file, "waves", "--maps", str(WAVE_MAPS), "--group", str(GROUP),
                   "--work-ms", "20", "--exec-log", str(exec_log), log_path=str(tmp_path / "waves-driver.log"))
    table = None
    try:
        ready = waves.next_event({"ready"}, 60)
        clock_offset = time.monotonic() - ready["t"]  # the driver's clock to ours, within the pipe's latency
        waves.next_event({"table_ready"}, 60)
        before = [waves.next_event({"wave"}, 60) for _ in range(3)]
        # Mid-wave: the first peer has made map outputs of the wave under way, which its reduces still need.
        started = waves.next_event({"wave_start"}, 60)
        wait_until(lambda: sum(1 for i, node, _t in read_exec_log(str(exec_log))
                               if node == first_id and i >= started["first_map"]) >= 10,
                   30, "the first peer to make map outputs of the wave under way", interval_s=0.005)
        held = four.kill(first)
        t_kill = time.monotonic()
        kill_wall = time.time()
        for peer in survivors:
            wait_until(lambda: peer.states().get(first_id) == "dead", DETECTION_BOUND_S + SLACK_S,
                       f"{peer.peer_id} to declare the first peer dead")
        t_dead = time.monotonic()
        # A new driver attaches to a survivor: the table (kv, names) and the scheduler still serve it.
        t_table = time.monotonic()
        table = Driver(four.peers[2], four.token_file, "table", "--maps", str(SMALL_MAPS), "--group", str(GROUP),
                       log_path=str(tmp_path / "table-driver.log"))
        checks = table.next_event({"table"}, 120)
        table_s = time.monotonic() - t_table
        assert table.finish() == 0
        # Work keeps finishing: after the kill, no wave waits longer than detection plus a couple of waves, and
        # at least three finish after every survivor knows the first peer is dead.
        typical = statistics.median(e["elapsed_s"] for e in before)
        gap_bound_s = DETECTION_BOUND_S + 2 * typical + RECOVERY_SLACK_S
        after, stalled = [], None

        def next_wave(kinds: set[str]) -> dict | None:
            """The next event, or None (and `stalled` set) if no wave finished within the bound."""
            nonlocal stalled
            last_s = after[-1]["t"] + clock_offset if after else t_kill
            try:
                return waves.next_event(kinds, max(0.0, last_s + gap_bound_s - time.monotonic()))
            except EventTimeout as exc:
                stalled = exc
                return None

        while sum(1 for e in after if e["t"] + clock_offset > t_dead) < 3 and (event := next_wave({"wave"})):
            after.append(event)
        if stalled is None:
            waves.send("stop")
            while (event := next_wave({"wave", "exit"})) and event["event"] == "wave":
                after.append(event)  # the wave under way when told to stop
            if stalled is None:
                assert waves.finish() == 0
    finally:
        waves.kill()
        if table is not None:
            table.kill()

    failed = [e for e in before + after if not e["ok"]]
    for event in before + after:
        if event["ok"]:
            assert event["value"] == expected_result(event["first_map"], WAVE_MAPS, GROUP), f"wave {event['wave']}"
    assert checks["kv_before"] == "written before the first peer died"
    assert checks["kv_after"] == "yes"
    assert checks["keeper"] == "pong"
    assert checks["fresh_node"] in {p.peer_id for p in survivors}
    assert checks["value"] == expected_result(0, SMALL_MAPS, GROUP)
    executions = read_exec_log(str(exec_log))
    on_first = sum(1 for _i, node, t in executions if node == first_id and t < kill_wall)
    assert on_first > 0, "the first peer ran none of the waves' maps: its death did not touch the job"
    assert not [i for i, node, t in executions if node == first_id and t > kill_wall], "a killed peer ran maps"
    wrongly_dead = {dead for _observer, dead in declared_dead(four) if dead != first_id}
    assert not wrongly_dead, f"live peers were declared dead: {wrongly_dead}"
    after_view = table_view(driver_peer)
    kill_in_driver_clock = t_kill - clock_offset
    spanning = [e for e in after if e["t"] - e["elapsed_s"] <= kill_in_driver_clock]
    started_after = [e for e in after if e["t"] - e["elapsed_s"] > kill_in_driver_clock]
    print(f"\n[kill -9 of the first peer] waves of {WAVE_MAPS} maps + {WAVE_MAPS // GROUP} reduces from a driver on "
          f"peer 1: {len(before)} before, {len(after)} after; a wave takes {typical:.2f} s (median before); "
          f"the wave(s) under way at the kill took {max((e['elapsed_s'] for e in spanning), default=0):.2f} s; "
          f"the first wave submitted after the kill finished "
          f"{(started_after[0]['t'] + clock_offset - t_kill) if started_after else float('nan'):.2f} s after it; "
          f"all survivors saw it dead after {t_dead - t_kill:.2f} s; it had run {on_first} maps, its store held "
          f"{held} objects")
    print(f"[kill -9 of the first peer] a new driver on peer 2 read the old kv key, wrote one, resolved the old "
          f"named actor, claimed a new name and ran a graph in {table_s:.2f} s (steps: {checks['took_s']}); "
          f"table replicas now {after_view.get('replicas')} (leader {after_view.get('leader')}); "
          f"{sum(e['elapsed_s'] for e in before + after):.1f} s of waves, "
          f"{(len(before) + len(after)) * (WAVE_MAPS + WAVE_MAPS // GROUP)} tasks")
    finished = [kill_in_driver_clock] + [e["t"] for e in after]
    gap_s = max(b - a for a, b in zip(finished, finished[1:])) if after else float("inf")
    print(f"[kill -9 of the first peer] longest time without a wave finishing after the kill: "
          f"{'more than ' + format(gap_bound_s, '.1f') if stalled else format(gap_s, '.2f')} s "
          f"(bound {gap_bound_s:.1f} s)")
    # Checked last, so that whatever else broke fails the test as itself, not as the known bugs above.
    if failed:
        raise WorkFailed("\n".join(f"wave {e['wave']} failed: {e['error']}\n{e.get('traceback')}" for e in failed))
    if stalled is not None or gap_s > gap_bound_s:
        raise RecoveryTooSlow(f"no wave finished for over {gap_bound_s:.1f} s after the first peer was killed\n"
                              f"{stalled or ''}")
    if table_s > gap_bound_s:
        raise RecoveryTooSlow(f"a new driver's checks and small graph took {table_s:.1f} s after the kill")


# ---- 4. Dropping every ref frees every copy on every peer -------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dropping_all_refs_after_a_job_returns_every_store_to_its_starting_size(four, tmp_path, expected):
    def usage() -> list[tuple[int, int]]:
        """(StoreUsed as the peer reports itself, object files in its store directory) per peer."""
        return [(four.self_status(p).get("StoreUsed", 0), stored_objects(d))
                for p, d in zip(four.peers, four.store_dirs)]

    start = usage()
    driver = Driver(four.peers[0], four.token_file, "job", *job_args(None, "--hold"),
                    log_path=str(tmp_path / "driver.log"))
    try:
        driver.next_event({"ready"}, 60)
        result = driver.next_event({"result"}, JOB_DEADLINE_S)
        assert result["value"] == expected
        driver.next_event({"holding"}, 60)
        held = usage()
        # Every map output is still referenced, so on some store: ~1 MiB each.
        assert sum(n for _used, n in held) >= N_MAPS, held
        driver.send("drop")
        driver.next_event({"dropped"}, 60)
        t_drop = time.monotonic()
        try:
            wait_until(lambda: usage() == start, 60, "every store to return to its starting size")
        except BaseException:
            print(p2p("memory", "--home", four.peers[0].home, check=False).stdout[-5000:])
            raise
        freed_s = time.monotonic() - t_drop
        driver.send("exit")
        assert driver.finish() == 0
    finally:
        driver.kill()
    assert not declared_dead(four), "a peer was declared dead in a run without faults"
    mib = [round(used / 2**20, 1) for used, _n in held]
    print(f"\n[drop all refs] {N_MAPS} map outputs kept (MiB per peer {mib}, objects {[n for _u, n in held]}); "
          f"every store back to its starting size {freed_s:.2f} s after the refs were dropped")
