"""Reinforcement learning benchmark: PPO on CartPole-v1 to a mean return of 475, sampling throughput with
1, 2 and 3 rollout workers against a single process, and evolution strategies' throughput on Pendulum-v1.

    python benchmarks/rl.py                          # everything, on 3 local peers of 1 CPU each
    python benchmarks/rl.py --only sampling es       # a part
    python benchmarks/rl.py --seeds 0 --peers 1      # one embedded peer with 3 CPUs instead of 3 peers

The peers are started with `p2p start` / `p2p join` on loopback (each its own process tree and store) and the
driver attaches to the first. "single process" steps the same envs with the same policy in the driver, with
no cluster at all: the baseline a distributed sampler has to beat. RLlib's PPO is run side by side when
`ray.rllib` imports (it needs torch and dm-tree, which the bench extra does not install).

The machine is shared and small (2 cores): figures are noisy and scaling past 2 workers cannot show on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import local_peers
import p2pcompute as p2p
from p2pcompute.mlkit import rl


def start_peers(n: int) -> list[str]:
    homes, address, token = local_peers.start_peers(n, cpus=1, prefix="p2p-rl-bench-")
    p2p.init(address=address, token=token)
    deadline = time.monotonic() + 30
    while sum(node["Alive"] for node in p2p.nodes()) < n and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the joins to be seen, bounded
    return homes




# ---- PPO to 475 -----------------------------------------------------------------------------------------

def ppo_to_475(seed: int, runners: int, max_steps: int) -> dict:
    algo = (rl.PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=runners)
            .training(lr=3e-4).debugging(seed=seed).build())
    try:
        t0 = time.perf_counter()
        result = {}
        while algo.num_env_steps_sampled < max_steps:
            result = algo.train()
            if result["episode_return_mean"] >= 475:
                break
        wall = time.perf_counter() - t0
        solved = result["episode_return_mean"] >= 475
        return {"seed": seed, "solved": solved, "env_steps": algo.num_env_steps_sampled, "wall_s": wall,
                "iterations": algo.iteration, "return_mean": result["episode_return_mean"],
                "greedy_return": algo.evaluate(5)["evaluation_return_mean"]}
    finally:
        algo.stop()


# ---- sampling throughput --------------------------------------------------------------------------------

def sampling(envs: int, fragment: int, rounds: int, max_workers: int) -> dict:
    """Env steps/s of one sampling round (a broadcast, every worker's sample, the batches back in the driver).

    One group of `max_workers` actors lives for the whole measurement; configurations (the driver alone, the
    first 1, 2, ... workers) take turns round by round and each keeps its median, so a burst of load from
    other users of the machine hits every configuration alike instead of one of them.
    """
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    spec = rl.PolicySpec.from_spaces(env.observation_space, env.action_space)
    weights = rl.Policy(spec, seed=0).get_weights()
    local = rl.RolloutWorker("CartPole-v1", None, spec, num_envs=envs, rollout_fragment_length=fragment)
    group = rl.WorkerGroup(rl.RolloutWorker, max_workers,
                           lambda i, g: (("CartPole-v1", None, spec),
                                         dict(num_envs=envs, rollout_fragment_length=fragment, worker_index=i,
                                              seed=i)),
                           {"num_cpus": 1})
    try:
        handles = [group.workers[i] for i in sorted(group.workers)]
        ref = p2p.put(weights)
        p2p.get([h.sample.remote(ref) for h in handles])  # warm: actors started, code imported
        local.sample(weights)
        rates: dict[str, list[float]] = {}
        for _ in range(rounds):
            t0 = time.perf_counter()
            local.sample(weights)
            rates.setdefault("single process", []).append(envs * fragment / (time.perf_counter() - t0))
            for n in range(1, max_workers + 1):
                t0 = time.perf_counter()
                ref = p2p.put(weights)  # a broadcast per round, as in training
                steps = sum(len(b) for b in p2p.get([h.sample.remote(ref) for h in handles[:n]]))
                rates.setdefault(f"{n} worker{'s' if n > 1 else ''}", []).append(steps / (time.perf_counter() - t0))
        return {name: float(np.median(v)) for name, v in rates.items()}
    finally:
        group.stop()


# ---- ES -------------------------------------------------------------------------------------------------

def es_scaling(rounds: int, max_workers: int, pairs: int) -> dict:
    """Env steps/s of ES rollouts on Pendulum-v1 (antithetic pairs of 200-step episodes): the driver alone,
    then the first 1, 2, ... workers of one ES algorithm's group, taking turns round by round (medians)."""
    algo = (rl.ESConfig().environment("Pendulum-v1").env_runners(num_env_runners=max_workers)
            .training(num_rollouts_per_worker=pairs, noise_size=2_000_000).debugging(seed=0).build())
    try:
        local = rl.es.ESWorker("Pendulum-v1", None, algo.policy_spec, algo.noise, seed=0)
        handles = [algo.workers.workers[i] for i in sorted(algo.workers.workers)]
        theta = algo.get_weights()
        ref = p2p.put(theta)
        p2p.get([h.rollouts.remote(ref, 1, 0.05) for h in handles])  # warm
        rates: dict[str, list[float]] = {}
        for _ in range(rounds):
            t0 = time.perf_counter()
            steps = local.rollouts(theta, pairs, 0.05)["env_steps"]
            rates.setdefault("single process", []).append(steps / (time.perf_counter() - t0))
            for n in range(1, max_workers + 1):
                t0 = time.perf_counter()
                ref = p2p.put(theta)
                steps = sum(r["env_steps"] for r in p2p.get([h.rollouts.remote(ref, pairs, 0.05)
                                                             for h in handles[:n]]))
                rates.setdefault(f"{n} worker{'s' if n > 1 else ''}", []).append(steps / (time.perf_counter() - t0))
        return {name: float(np.median(v)) for name, v in rates.items()}
    finally:
        algo.stop()


def es_cartpole(workers: int, max_iterations: int) -> dict:
    """ES to a mean return of 475 on CartPole-v1 (the current policy's evaluation episodes of one iteration)."""
    algo = (rl.ESConfig().environment("CartPole-v1").env_runners(num_env_runners=workers)
            .training(num_rollouts_per_worker=8, noise_size=2_000_000, num_eval_episodes=3)
            .debugging(seed=0).build())
    try:
        t0 = time.perf_counter()
        result = {}
        while algo.iteration < max_iterations:
            result = algo.train()
            if result["episode_return_mean"] >= 475:
                break
        return {"solved": result["episode_return_mean"] >= 475, "iterations": algo.iteration,
                "env_steps": algo.num_env_steps_sampled, "wall_s": time.perf_counter() - t0}
    finally:
        algo.stop()


def rllib_status() -> str:
    try:
        from ray.rllib.algorithms.ppo import PPOConfig  # noqa: F401
        import torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means it cannot run here
        return f"skipped: ray.rllib cannot run here ({type(exc).__name__}: {exc})"
    return "available"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=["ppo", "sampling", "es", "rllib"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=9, help="sampling rounds per configuration (median kept)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    parts = set(args.only or ["ppo", "sampling", "es", "rllib"])
    report: dict = {}
    homes = []
    if args.peers == 1:
        p2p.init(num_cpus=3)
    else:
        homes = start_peers(args.peers)
    try:
        if "ppo" in parts:
            runs = []
            for seed in args.seeds:
                r = ppo_to_475(seed, runners=2, max_steps=args.max_steps)
                runs.append(r)
                print(f"PPO CartPole-v1 seed {seed}: {'reached 475' if r['solved'] else 'NOT solved'} after "
                      f"{r['env_steps']:,} env steps, {r['wall_s']:.1f} s wall, {r['iterations']} iterations "
                      f"(greedy return {r['greedy_return']:.0f})", flush=True)
            report["ppo"] = runs
        if "sampling" in parts:
            s = sampling(envs=4, fragment=500, rounds=args.rounds, max_workers=3)
            report["sampling"] = s
            base = s["single process"]
            for name, v in s.items():
                print(f"sampling CartPole-v1, {name:>14}: {v:9,.0f} env steps/s ({v / base:.2f}x)", flush=True)
        if "es" in parts:
            e = es_scaling(rounds=max(3, args.rounds // 2), max_workers=3, pairs=4)
            report["es_scaling"] = e
            base = e["single process"]
            for name, v in e.items():
                print(f"ES Pendulum-v1, {name:>14}: {v:9,.0f} env steps/s ({v / base:.2f}x)", flush=True)
            cp = es_cartpole(workers=2, max_iterations=80)
            report["es_cartpole"] = cp
            print(f"ES CartPole-v1, 2 workers: {'reached 475' if cp['solved'] else 'NOT solved'} after "
                  f"{cp['iterations']} iterations, {cp['env_steps']:,} env steps, {cp['wall_s']:.1f} s", flush=True)
        if "rllib" in parts:
            report["rllib"] = rllib_status()
            print(f"RLlib: {report['rllib']}", flush=True)
    finally:
        p2p.shutdown()
        local_peers.stop_peers(homes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
