"""`python -m sims run ...` and `python -m sims sweep ...`.

`run` simulates one seed and prints the report (exit status 1 when an invariant was violated, 2 for bad
options). `sweep` runs many seeds in parallel processes with the same options and prints, for each failing
seed, what failed and the exact `run` command that replays it. `sweep` has smaller defaults (16 peers,
20 s, the mixed workload, moderate faults) so that a thousand seeds take minutes; any run option overrides
them. See docs/simulations.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import replace

from sims.options import (BREAKS, DEFAULT_FAULTS, WORKLOADS, Dist, FaultSpec, OptionError, SimOptions,
                          parse_duration_ns)

# Pauses and partitions stay shorter than the suspicion timeout here: longer ones get peers declared dead
# and so fenced (deaths are final), and a run where many peers are fenced exercises little else. Sweep with
# `--faults ...,pause_for=uniform:7s:12s` or `partition_for=exp:6s` to study those.
SWEEP_FAULTS = "crash=0.01,restart=0.3,pause=0.01,pause_for=uniform:100ms:1s,loss=0.02,dup=0.01,reorder=0.05," \
               "partition=0.005,partition_for=uniform:200ms:1500ms,kill=0.01,skew=20ms"
SWEEP_DEFAULTS = SimOptions(peers=16, seconds=20, workload="mixed", faults=FaultSpec.parse(SWEEP_FAULTS))


def _add_run_options(p: argparse.ArgumentParser) -> None:
    # Every default is None here: unset options come from SimOptions() for run, SWEEP_DEFAULTS for sweep.
    p.add_argument("--peers", type=int, help="peers at the start (run: 100)")
    p.add_argument("--seconds", type=float, help="simulated seconds of load and faults (run: 30)")
    p.add_argument("--seed", type=int, help="the seed: everything random derives from it (run: 1)")
    p.add_argument("--workload", choices=WORKLOADS, help="what the users do (run: tasks)")
    p.add_argument("--load", type=float, help="offered work as a fraction of the cluster's CPU capacity (0.9)")
    p.add_argument("--service", help="task duration distribution, e.g. exp:100ms (default)")
    p.add_argument("--choices", type=int, help="peers a spillback samples: power of d choices (2)")
    p.add_argument("--cpus", type=int, help="CPUs per peer (2)")
    p.add_argument("--submitters", type=float, help="fraction of peers running a submitting driver (0.25)")
    p.add_argument("--faults", help="e.g. crash=0.01,restart=0.5,pause=0.005,loss=0.05,dup=0.01,reorder=0.1,"
                                    "partition=0.001,skew=50ms; '' for none (run's default: "
                                    f"{DEFAULT_FAULTS}; see docs/simulations.md)")
    p.add_argument("--latency", help="one-way latency distribution of a link (lognorm:500us:0.5)")
    p.add_argument("--zones", type=int, help="network zones; links between zones add --zone-latency (1)")
    p.add_argument("--zone-latency", help="extra latency between zones (10ms)")
    p.add_argument("--quiet", type=float, help="longest quiet period in seconds (0: automatic)")
    p.add_argument("--restart-id", choices=("new", "same"), help="a restarted peer's id (new)")
    p.add_argument("--join-mode", choices=("prejoin", "join"), help="start pre-joined, or simulate the joins")
    p.add_argument("--codec", action="store_true", default=None, help="encode every message with the real codec")
    p.add_argument("--unreliable-streams", action="store_true", default=None,
                   help="apply loss/dup/reorder to stream (TCP) traffic too")
    p.add_argument("--view-interval-ms", type=int, help="how often resource views are refreshed, both ways (100, as the runtime)")
    p.add_argument("--break", dest="breaks", action="append", choices=BREAKS,
                   help="test only: break a core on purpose, to see the checks catch it")


def _options(ns: argparse.Namespace, base: SimOptions) -> SimOptions:
    opts = replace(base)
    simple = {"peers": "peers", "seconds": "seconds", "seed": "seed", "workload": "workload", "load": "load",
              "choices": "choices", "cpus": "cpus", "submitters": "submitters", "zones": "zones",
              "quiet": "quiet", "restart_id": "restart_id", "join_mode": "join_mode", "codec": "codec",
              "unreliable_streams": "unreliable_streams", "view_interval_ms": "view_interval_ms"}
    for arg, attr in simple.items():
        value = getattr(ns, arg, None)
        if value is not None:
            setattr(opts, attr, value)
    if ns.service is not None:
        opts.service = Dist.parse(ns.service)
    if ns.latency is not None:
        opts.latency = Dist.parse(ns.latency)
    if ns.zone_latency is not None:
        opts.zone_latency = parse_duration_ns(ns.zone_latency)
    if ns.faults is not None:
        opts.faults = FaultSpec.parse(ns.faults)
    if ns.breaks:
        opts.breaks = tuple(ns.breaks)
    opts.report = getattr(ns, "report", None)
    opts.plot = getattr(ns, "plot", None)
    opts.validate()
    return opts


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m sims", description="Deterministic fault-injection simulation "
                                  "of p2pcompute's real protocol cores. See docs/simulations.md.")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate one seed and print the report")
    _add_run_options(run)
    run.add_argument("--report", help="also write the report as JSON to this file")
    run.add_argument("--plot", help="also draw latency and membership agreement over time (needs matplotlib)")
    run.add_argument("--progress", action="store_true", help="print progress while running")
    sweep = sub.add_parser("sweep", help="run many seeds in parallel; print each failing seed's replay command")
    _add_run_options(sweep)
    sweep.add_argument("--seeds", type=int, default=100, help="how many seeds (100)")
    sweep.add_argument("--first-seed", type=int, default=1, help="the first seed (1)")
    sweep.add_argument("--jobs", type=int, default=2, help="parallel processes (2)")
    return top


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    try:
        if ns.command == "run":
            return _run(_options(ns, SimOptions()), ns.progress)
        return _sweep(_options(ns, SWEEP_DEFAULTS), ns.seeds, ns.first_seed, ns.jobs)
    except OptionError as exc:
        print(f"sims: {exc}", file=sys.stderr)
        return 2


def _run(opts: SimOptions, progress: bool) -> int:
    from sims.report import format_text, plot
    from sims.run import run

    result = run(opts, progress=(lambda text: print(text, file=sys.stderr, flush=True)) if progress else None)
    print(format_text(result.report))
    if opts.report:
        with open(opts.report, "w") as f:
            json.dump(result.report, f, indent=1)
    if opts.plot:
        problem = plot(result.report, opts.plot)
        print(problem if problem else f"plot written to {opts.plot}", file=sys.stderr)
    return 0 if result.ok else 1


def _one_seed(opts: SimOptions) -> tuple:
    from sims.run import run

    t0 = time.perf_counter()
    try:
        result = run(opts)
    except Exception as exc:  # noqa: BLE001 - a crash of the simulator or a core is a finding, not the end
        import traceback
        return opts.seed, False, [f"the simulation raised {type(exc).__name__}: {exc}",
                                  traceback.format_exc(limit=-4)], "", time.perf_counter() - t0
    summary = [f"{v.invariant} at {v.at_ns / 1e9:.3f}s: {v.message}" for v in result.violations[:3]]
    return opts.seed, result.ok, summary, result.hash, time.perf_counter() - t0


def sweep(opts: SimOptions, seeds: int, first_seed: int, jobs: int, out=sys.stdout) -> list[int]:
    """Run `seeds` seeds from `first_seed`; returns the failing seeds (and prints their replay commands)."""
    runs = [replace(opts, seed=s, report=None, plot=None) for s in range(first_seed, first_seed + seeds)]
    failed: list[int] = []
    t0 = time.perf_counter()
    if jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            results = pool.imap_unordered(_one_seed, runs)
            failed = _collect(results, runs, out)
    else:
        failed = _collect(map(_one_seed, runs), runs, out)
    argv = opts.argv()
    i = argv.index("--seed")
    shown = " ".join(argv[:i] + argv[i + 2:])
    print(f"sweep: {seeds} seeds from {first_seed}, {len(failed)} failed, {time.perf_counter() - t0:.1f}s wall "
          f"(run {shown} --seed N)", file=out)
    return failed


def _collect(results, runs: list[SimOptions], out) -> list[int]:
    by_seed = {o.seed: o for o in runs}
    failed = []
    for seed, ok, summary, digest, wall in results:
        if not ok:
            failed.append(seed)
            print(f"seed {seed} FAILED ({wall:.1f}s):", file=out)
            for line in summary:
                print(f"    {line}", file=out)
            print(f"  replay: {by_seed[seed].replay_command()}", file=out, flush=True)
    return sorted(failed)


def _sweep(opts: SimOptions, seeds: int, first_seed: int, jobs: int) -> int:
    if seeds < 1 or jobs < 1:
        raise OptionError("--seeds and --jobs must be >= 1")
    return 1 if sweep(opts, seeds, first_seed, jobs) else 0
