"""mlkit.tune benchmarks: trial throughput side by side with Ray Tune, and ASHA's compute against FIFO's.

    python benchmarks/tune.py                          # throughput (p2pcompute and Ray Tune) and ASHA vs FIFO
    python benchmarks/tune.py --trials 50 --only p2p   # smaller, p2pcompute only
    python benchmarks/tune.py --skip-asha

Throughput: `--trials` trials, each 20 reports of a 10 ms step (a sleep, so the figure measures the tuning
machinery rather than CPU contention with other users of a shared machine), with one CPU per trial on
`--cpus` CPUs. The ideal is total trial time / CPUs. Each framework runs in a fresh process of its own, one
after the other; the time covers `Tuner.fit()` only (cluster start-up is reported separately).

ASHA vs FIFO: 64 configs of a synthetic objective with a known optimum, loss_t(x, y) =
(x - 0.3)^2 + (y - 0.6)^2 + 1/sqrt(t) (noise-free, 27 steps of 3 ms), run under FIFO and under ASHA
(grace 1, reduction factor 3) with the same seeded configs. It reports the best final true objective of
each and the trial-steps each executed (counted inside the trainables, including steps run between a
report and the decision to stop), and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

STEPS = 20
STEP_S = 0.010


def p2p_throughput(trials: int, cpus: int) -> dict:
    import p2pcompute as p2p
    from p2pcompute.mlkit import tune

    def trainable(config):
        for i in range(STEPS):
            time.sleep(STEP_S)
            tune.report({"loss": config["x"] * i})

    t0 = time.perf_counter()
    p2p.init(num_cpus=cpus)
    init_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        grid = tune.Tuner(trainable, param_space={"x": tune.uniform(0, 1)},
                          tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=trials),
                          run_config=tune.RunConfig(name="bench", storage_path=d, verbose=0)).fit()
        fit_s = time.perf_counter() - t0
        assert grid.num_terminated == trials, grid
    p2p.shutdown()
    return {"init_s": init_s, "fit_s": fit_s}


def ray_throughput(trials: int, cpus: int) -> dict:
    import ray
    from ray import tune as rtune

    def trainable(config):
        for i in range(STEPS):
            time.sleep(STEP_S)
            rtune.report({"loss": config["x"] * i})

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        grid = rtune.Tuner(rtune.with_resources(trainable, {"cpu": 1}), param_space={"x": rtune.uniform(0, 1)},
                           tune_config=rtune.TuneConfig(metric="loss", mode="min", num_samples=trials),
                           run_config=rtune.RunConfig(name="bench", storage_path=d, verbose=0)).fit()
        fit_s = time.perf_counter() - t0
        assert len(grid) == trials and not grid.errors, grid.errors
    ray.shutdown()
    return {"init_s": init_s, "fit_s": fit_s}


def asha_vs_fifo(cpus: int) -> dict:
    import p2pcompute as p2p
    from p2pcompute.mlkit import tune

    counts = tempfile.mkdtemp(prefix="tune_steps_")
    max_t = 27

    def objective(config):
        done = 0
        try:
            for t in range(1, max_t + 1):
                time.sleep(0.003)
                done += 1
                true = (config["x"] - 0.3) ** 2 + (config["y"] - 0.6) ** 2
                tune.report({"loss": true + 1 / t ** 0.5, "true": true})
        finally:
            with open(os.path.join(counts, tune.get_trial_id()), "w") as f:
                f.write(str(done))

    def run(scheduler, name):
        for f in os.listdir(counts):
            os.remove(os.path.join(counts, f))
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            grid = tune.Tuner(objective, param_space={"x": tune.uniform(0, 1), "y": tune.uniform(0, 1)},
                              tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=64, seed=7,
                                                          scheduler=scheduler),
                              run_config=tune.RunConfig(name=name, storage_path=d, verbose=0)).fit()
            wall = time.perf_counter() - t0
            best = grid.get_best_result()
            steps = sum(int(open(os.path.join(counts, f)).read()) for f in os.listdir(counts))
            recorded = sum(r.metrics["training_iteration"] for r in grid)
            return {"best_true": best.metrics["true"], "steps": steps, "recorded_steps": recorded, "wall_s": wall}

    p2p.init(num_cpus=cpus)
    try:
        fifo = run(None, "fifo")
        asha = run(tune.schedulers.ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=3), "asha")
    finally:
        p2p.shutdown()
        shutil.rmtree(counts, ignore_errors=True)
    return {"fifo": fifo, "asha": asha, "step_ratio": asha["steps"] / fifo["steps"],
            "best_gap": asha["best_true"] - fifo["best_true"]}


def child(args) -> None:
    fn = {"p2p": p2p_throughput, "ray": ray_throughput}.get(args.child)
    out = fn(args.trials, args.cpus) if fn else asha_vs_fifo(args.cpus)
    print("BENCH " + json.dumps(out), flush=True)


def run_child(kind: str, args) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--trials", str(args.trials),
           "--cpus", str(args.cpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    print(f"{kind} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--only", choices=["p2p", "ray"], default=None)
    ap.add_argument("--skip-asha", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    ideal = args.trials * STEPS * STEP_S / args.cpus
    print(f"{args.trials} trials x {STEPS} reports of {STEP_S * 1000:.0f} ms on {args.cpus} CPUs: "
          f"ideal {ideal:.1f} s")
    figures = {}
    for kind in ("p2p", "ray"):
        if args.only and kind != args.only:
            continue
        if kind == "ray":
            if importlib.util.find_spec("ray") is None:
                print("ray: not installed, skipped")
                continue
        r = run_child(kind, args)
        if r:
            figures[kind] = r
            print(f"{kind:4s}: fit {r['fit_s']:6.1f} s = {r['fit_s'] / ideal:.2f}x ideal   (init {r['init_s']:.1f} s)")
    if "p2p" in figures and "ray" in figures:
        print(f"p2pcompute is {figures['ray']['fit_s'] / figures['p2p']['fit_s']:.1f}x faster than Ray Tune")
    if not args.skip_asha:
        r = run_child("asha", args)
        if r:
            f, a = r["fifo"], r["asha"]
            print(f"ASHA vs FIFO, 64 configs x 27 steps: best true objective FIFO {f['best_true']:.4f}, "
                  f"ASHA {a['best_true']:.4f} (gap {r['best_gap']:+.4f}); trial-steps FIFO {f['steps']}, "
                  f"ASHA {a['steps']} (recorded {a['recorded_steps']}) = {r['step_ratio']:.0%} of FIFO's; "
                  f"wall FIFO {f['wall_s']:.1f} s, ASHA {a['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
