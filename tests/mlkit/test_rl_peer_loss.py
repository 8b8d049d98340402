"""A rollout worker lost with its peer: three real peers (`p2p start` / `p2p join`), a driver in its own
process, and the peer hosting a mid-sample rollout worker SIGKILLed with its whole process group. The
iteration must complete with the surviving worker's samples, and the lost worker be replaced elsewhere."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from cluster_util import Cluster
from itest_util import run_driver

pytestmark = [pytest.mark.mlkit, pytest.mark.integration, pytest.mark.slow]

DRIVER = r'''
import json, os, shutil, signal, sys, threading, time
import gymnasium as gym
import p2pcompute as p2p
from p2pcompute.mlkit import rl

HOMES = {homes!r}
p2p.init(address={address!r}, token=open({token_file!r}).read().strip())

class StallOnce(gym.Wrapper):
    """CartPole that stalls at step 30 in the worker the driver names (by a file), until its peer dies."""
    def __init__(self, ctx):
        super().__init__(gym.make("CartPole-v1"))
        self.dir, self.index, self.steps = ctx["dir"], ctx.worker_index, 0
    def step(self, action):
        self.steps += 1
        if self.steps == 30 and os.path.exists(os.path.join(self.dir, f"stall-{{self.index}}")):
            os.remove(os.path.join(self.dir, f"stall-{{self.index}}"))
            with open(os.path.join(self.dir, "stalled.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(self.dir, "stalled.tmp"), os.path.join(self.dir, "stalled"))
            threading.Event().wait(120)  # never set: the peer is killed under it
        return super().step(action)

def state(home):
    with open(os.path.join(home, "peer.json")) as f:
        return json.load(f)

work = {work!r}
algo = (rl.PPOConfig().environment(StallOnce, env_config={{"dir": work}})
        .env_runners(num_env_runners=2, rollout_fragment_length=100, sample_timeout_s=90)
        .training(train_batch_size=200, num_epochs=1).debugging(seed=0).build())
where = {{i: p2p.get(w.where.remote(), timeout=60) for i, w in algo.workers.workers.items()}}
driver_peer = state(HOMES[0])["peer_id"]
victim = next(i for i, w in where.items() if w["node_id"] != driver_peer)
victim_home = next(h for h in HOMES if state(h)["peer_id"] == where[victim]["node_id"])
open(os.path.join(work, f"stall-{{victim}}"), "w").close()

out = {{}}
runner = threading.Thread(target=lambda: out.update(result=algo.train()), daemon=True)
runner.start()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(work, "stalled")):
    assert time.monotonic() < deadline, "the victim never started sampling"
    time.sleep(0.02)  # polling a file another process writes, bounded by the deadline
victim_state = state(victim_home)
os.killpg(os.getpgid(victim_state["pid"]), signal.SIGKILL)  # the whole machine: peer, workers, store
shutil.rmtree(victim_state["store_dir"], ignore_errors=True)
t_kill = time.monotonic()
runner.join(150)
assert not runner.is_alive(), "the iteration did not complete after the peer was killed"
recovery_s = time.monotonic() - t_kill
first = out["result"]
second = algo.train()
new_where = p2p.get(algo.workers.workers[victim].where.remote(), timeout=60)
print("RESULT " + json.dumps({{
    "victim_node": where[victim]["node_id"], "replacement_node": new_where["node_id"],
    "recovery_s": recovery_s,
    "first": {{k: first[k] for k in ("num_env_runner_batches", "num_env_steps_sampled_this_iter",
                                    "num_env_runner_restarts")}},
    "second": {{k: second[k] for k in ("num_env_runner_batches", "num_env_steps_sampled_this_iter")}}}}))
algo.stop()
'''


@pytest.mark.timeout(300)
def test_rollout_worker_lost_with_its_peer_is_replaced_and_the_iteration_completes(tmp_path):
    base = tempfile.mkdtemp(prefix="p2prl-", dir="/tmp")  # peer homes hold Unix sockets: short paths
    cluster = Cluster(base)
    try:
        for _ in range(3):
            cluster.start(num_cpus=1)
        work = tmp_path / "work"
        work.mkdir()
        code = DRIVER.format(homes=[p.home for p in cluster.peers], address=cluster.peers[0].address,
                             token_file=cluster.token_file, work=str(work))
        proc = run_driver(code, tmp_path, timeout_s=240)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        report = json.loads(line[len("RESULT "):])
        print(f"\n[rl peer loss] iteration completed {report['recovery_s']:.1f} s after the kill")
        assert report["first"] == {"num_env_runner_batches": 1, "num_env_steps_sampled_this_iter": 100,
                                   "num_env_runner_restarts": 1}
        assert report["second"] == {"num_env_runner_batches": 2, "num_env_steps_sampled_this_iter": 200}
        assert report["replacement_node"] != report["victim_node"]
    finally:
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)
