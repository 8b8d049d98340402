"""The Tuner on a real embedded peer (`ml_cluster`): storage, retries from checkpoints, PBT, class trainables."""

from __future__ import annotations

import csv
import json
import pickle
import time

import pytest

from p2pcompute.mlkit import tune

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]


def quadratic(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["step"] + 1 if ckpt else 0
    for step in range(start, 6):
        loss = (config["x"] - 3) ** 2 + config["offset"] + 1.0 / (step + 1)
        tune.report({"loss": loss, "nested": {"x2": config["x"] * 2}},
                    checkpoint=tune.Checkpoint.from_dict({"step": step}))


def test_fit_writes_files_readable_without_p2pcompute(ml_cluster, tmp_path):
    tuner = tune.Tuner(quadratic, param_space={"x": tune.uniform(0, 6), "offset": tune.grid_search([0, 10])},
                       tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=3, seed=0),
                       run_config=tune.RunConfig(name="files", storage_path=str(tmp_path), verbose=0,
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    grid = tuner.fit()
    assert len(grid) == 6 and grid.num_terminated == 6 and grid.errors == []
    best = grid.get_best_result()
    losses = {r.trial_id: r.metrics["loss"] for r in grid}
    assert best.metrics["loss"] == min(losses.values())
    assert best.config["offset"] == 0
    exp = tmp_path / "files"
    for r in grid:
        d = exp / r.trial_id
        assert json.loads((d / "params.json").read_text()) == r.config
        assert pickle.loads((d / "params.pkl").read_bytes()) == r.config
        lines = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
        assert [x["training_iteration"] for x in lines] == [1, 2, 3, 4, 5, 6]
        with open(d / "progress.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 6 and float(rows[-1]["loss"]) == pytest.approx(r.metrics["loss"])
        assert "nested/x2" in rows[0]
        # Two checkpoints kept, the latest one a plain pickle.
        ckpts = sorted(p.name for p in d.iterdir() if p.name.startswith("checkpoint_"))
        assert ckpts == ["checkpoint_000005", "checkpoint_000006"]
        with open(d / "checkpoint_000006" / "checkpoint.pkl", "rb") as f:
            assert pickle.load(f) == {"step": 5}
        assert r.checkpoint.to_dict() == {"step": 5}
    df = grid.get_dataframe()
    rows = df.to_dict("records") if hasattr(df, "to_dict") else df
    assert len(rows) == 6 and {"loss", "config/x", "config/offset", "logdir"} <= set(rows[0])
    # Reopened from the directory alone.
    again = tune.ResultGrid.from_path(str(exp))
    assert again.get_best_result().trial_id == best.trial_id


def test_asha_stops_weak_trials_early(ml_cluster, tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()

    def slow_quadratic(config):
        step = 0
        try:
            for step in range(1, 13):
                time.sleep(0.002)
                tune.report({"loss": (config["x"] - 3) ** 2 + 1.0 / step})
        finally:
            (executed / tune.get_trial_id()).write_text(str(step))

    # One trial at a time, so the order results reach ASHA (and so its decisions) does not depend on timing.
    grid = tune.Tuner(slow_quadratic, param_space={"x": tune.uniform(0, 6)},
                      tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=12, seed=1,
                                                  max_concurrent_trials=1,
                                                  scheduler=tune.schedulers.ASHAScheduler(
                                                      max_t=12, grace_period=2, reduction_factor=2)),
                      run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0)).fit()
    iters = [r.metrics["training_iteration"] for r in grid]
    assert len(iters) == 12
    assert sum(i < 12 for i in iters) >= 4 and sum(iters) < 0.75 * 12 * 12   # stopped early, and often
    best = grid.get_best_result()
    assert best.metrics["training_iteration"] == 12          # the winner ran its full budget
    xs = sorted(abs(r.config["x"] - 3) for r in grid)
    assert abs(best.config["x"] - 3) == xs[0]                # and it is the config nearest the optimum
    # Trials wait for ASHA's decision at each rung, so a stopped trial computed nothing past its last report.
    for r in grid:
        assert int((executed / r.trial_id).read_text()) == r.metrics["training_iteration"]


def test_trial_that_raises_once_succeeds_on_retry_from_its_checkpoint(ml_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def flaky(config):
        ckpt = tune.get_checkpoint()
        start = ckpt.to_dict()["step"] + 1 if ckpt else 0
        with open(marks / f"{tune.get_trial_id()}.starts", "a") as f:
            f.write(f"{start}\n")
        for step in range(start, 8):
            first_run = not (marks / f"{tune.get_trial_id()}.failed").exists()
            if step == 4 and first_run:
                (marks / f"{tune.get_trial_id()}.failed").write_text("x")
                raise RuntimeError("injected failure at step 4")
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_dict({"step": step}))

    grid = tune.Tuner(flaky, param_space={"k": tune.grid_search([1, 2])},
                      run_config=tune.RunConfig(name="flaky", storage_path=str(tmp_path), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=1))).fit()
    assert grid.num_terminated == 2 and grid.errors == []
    for r in grid:
        assert r.num_failures == 1
        assert r.metrics["step"] == 7 and r.metrics["training_iteration"] == 8
        # The retry started after the last checkpoint (step 3), not from scratch.
        assert (marks / f"{r.trial_id}.starts").read_text().split() == ["0", "4"]
        assert "injected failure at step 4" in (tmp_path / "flaky" / r.trial_id / "error.txt").read_text()


def test_failures_beyond_max_failures_are_listed_per_trial(ml_cluster, tmp_path):
    def broken(config):
        tune.report({"v": 1})
        raise ValueError(f"bad config {config['k']}")

    grid = tune.Tuner(broken, param_space={"k": tune.grid_search([1, 2])},
                      run_config=tune.RunConfig(name="broken", storage_path=str(tmp_path), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=2))).fit()
    assert grid.num_errors == 2
    for (trial_id, text), r in zip(sorted(grid.errors), sorted(grid, key=lambda r: r.trial_id)):
        assert r.status == "ERROR" and r.num_failures == 3
        assert "ValueError: bad config" in text


def test_pbt_improves_a_population_whose_best_setting_changes_mid_run(ml_cluster, tmp_path):
    # Quality w grows by lr per step for the first 10 steps, then by (1 - lr): every fixed lr ends at
    # w = 10 lr + 10 (1 - lr) = 10, but a trial that switches from a high lr to a low one mid-run ends higher.
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def model(config):
        # PBT compares trials running side by side: each waits (bounded) until all six have started, since
        # actors may start seconds apart on a loaded machine.
        (barrier / tune.get_trial_id()).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting on the other trials' processes, bounded by the deadline
        ckpt = tune.get_checkpoint()
        w, t = (ckpt.to_dict()["w"], ckpt.to_dict()["t"]) if ckpt else (0.0, 0)
        while t < 20:
            time.sleep(0.03)
            t += 1
            w += config["lr"] if t <= 10 else 1.0 - config["lr"]
            tune.report({"w": w, "t": t}, checkpoint=tune.Checkpoint.from_dict({"w": w, "t": t}))

    space = {"lr": tune.grid_search([0.2, 0.3, 0.4, 0.6, 0.7, 0.8])}
    pbt = tune.schedulers.PopulationBasedTraining(
        perturbation_interval=2, quantile_fraction=0.5, resample_probability=0.3,
        hyperparam_mutations={"lr": tune.uniform(0.0, 1.0)}, seed=3)
    grid = tune.Tuner(tune.with_resources(model, {"num_cpus": 0.25}), param_space=space,
                      tune_config=tune.TuneConfig(metric="w", mode="max", scheduler=pbt),
                      run_config=tune.RunConfig(name="pbt", storage_path=str(tmp_path), verbose=0,
                                                stop={"t": 20})).fit()
    fixed_best = 10.0  # any fixed lr
    best = grid.get_best_result()
    history = {r.trial_id: [(h["t"], round(h["w"], 2)) for h in r.metrics_history] for r in grid}
    assert best.metrics["w"] > fixed_best + 0.5, history
    assert pbt.num_exploits > 0
    policies = [p for r in grid for p in [tmp_path / "pbt" / r.trial_id / "pbt_policy.jsonl"] if p.exists()]
    assert policies, "exploits are recorded in the trials' pbt_policy.jsonl"


class Counter(tune.Trainable):
    def setup(self, config):
        self.total = 0.0
        self.rate = config["rate"]

    def step(self):
        self.total += self.rate
        return {"total": self.total, "done": self.iteration + 1 >= 5}

    def save_checkpoint(self, checkpoint_dir):
        return {"total": self.total}

    def load_checkpoint(self, checkpoint):
        self.total = checkpoint["total"]


def test_class_trainable_with_resources(ml_cluster, tmp_path):
    grid = tune.Tuner(tune.with_resources(Counter, {"num_cpus": 0.5}),
                      param_space={"rate": tune.grid_search([1.0, 2.0, 3.0])},
                      tune_config=tune.TuneConfig(metric="total", mode="max"),
                      run_config=tune.RunConfig(name="cls", storage_path=str(tmp_path), verbose=0)).fit()
    assert sorted(r.metrics["total"] for r in grid) == [5.0, 10.0, 15.0]
    best = grid.get_best_result()
    assert best.config["rate"] == 3.0 and best.checkpoint.to_dict()["__trainable_dict__"] == {"total": 15.0}


def test_bad_input_is_refused_with_a_clear_message(ml_cluster, tmp_path):
    with pytest.raises(TypeError, match="trainable must be"):
        tune.Tuner(42)
    with pytest.raises(ValueError, match="needs a metric and mode"):
        tune.Tuner(quadratic, tune_config=tune.TuneConfig(scheduler=tune.schedulers.ASHAScheduler()))
    with pytest.raises(ValueError, match="TPESearch needs a metric and mode"):
        tune.Tuner(quadratic, tune_config=tune.TuneConfig(
            search_alg=tune.search.ConcurrencyLimiter(tune.search.TPESearch(), 2)))
    with pytest.raises(ValueError, match="both metric and mode"):
        tune.TuneConfig(metric="loss")
    with pytest.raises(ValueError, match="resource"):
        tune.with_resources(quadratic, {"num_cpus": -1})
    with pytest.raises(ValueError, match="no experiment"):
        tune.Tuner.restore(str(tmp_path), quadratic)
    with pytest.raises(RuntimeError, match="inside a trial"):
        tune.report({"x": 1})


def test_time_budget_ends_an_open_ended_search(ml_cluster, tmp_path):
    def endless(config):
        step = 0
        while True:
            time.sleep(0.02)
            step += 1
            tune.report({"step": step})

    t0 = time.monotonic()
    grid = tune.Tuner(endless, param_space={"x": tune.uniform(0, 1)},
                      tune_config=tune.TuneConfig(num_samples=-1, time_budget_s=2.0),
                      run_config=tune.RunConfig(name="budget", storage_path=str(tmp_path), verbose=0)).fit()
    assert time.monotonic() - t0 < 30
    # Endless trials never free their CPU: exactly two ran (on the two CPUs), both ended by the budget.
    assert len(grid) == 2 and grid.num_terminated == 2
