"""Trial schedulers as pure decision objects, fed results by hand (no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.mlkit import tune
from p2pcompute.mlkit.tune.schedulers import (CONTINUE, STOP, ASHAScheduler, Exploit, HyperBandScheduler,
                                              MedianStoppingRule, PopulationBasedTraining)

pytestmark = pytest.mark.mlkit


def result(t, value, **extra):
    return {"training_iteration": t, "acc": value, **extra}


def test_asha_promotes_the_top_fraction_and_stops_the_rest_at_each_rung():
    s = ASHAScheduler(metric="acc", mode="max", max_t=16, grace_period=1, reduction_factor=2)
    # Rungs at 1, 2, 4, 8. The first trial at a rung has nothing to compare with: it continues.
    assert s.on_trial_result("a", result(1, 0.5)) == CONTINUE
    # Better than the median of those recorded (rf=2: top half continues).
    assert s.on_trial_result("b", result(1, 0.6)) == CONTINUE
    # Worse than the 50th percentile of {0.5, 0.6} = 0.55: stopped.
    assert s.on_trial_result("c", result(1, 0.4)) == STOP
    # Between rungs nothing is decided.
    assert s.on_trial_result("a", result(1.5, 0.0)) == CONTINUE
    # At rung 2: a is first there, continues; b, worse than a there, is stopped.
    assert s.on_trial_result("a", result(2, 0.7)) == CONTINUE
    assert s.on_trial_result("b", result(2, 0.65)) == STOP
    # A trial is judged once per rung.
    assert s.on_trial_result("a", result(3, 0.0)) == CONTINUE
    # max_t stops whatever the score.
    assert s.on_trial_result("a", result(16, 1.0)) == STOP
    assert s.rung_sizes() == [{8: 0, 4: 0, 2: 2, 1: 3}]


def test_decision_points_are_the_rungs_and_pbt_intervals():
    s = ASHAScheduler(metric="acc", mode="max", max_t=20, grace_period=2, reduction_factor=3)
    assert s.decision_points("a") == {"at": [2, 6, 18, 20]}
    h = HyperBandScheduler(metric="acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    assert [h.decision_points(t) for t in "abc"] == [{"at": [1, 3, 9]}, {"at": [3, 9]}, {"at": [9]}]
    assert ASHAScheduler(time_attr="time_total_s", max_t=5).decision_points("a") is None
    pbt = PopulationBasedTraining(perturbation_interval=4, hyperparam_mutations={"lr": [1, 2]})
    assert pbt.decision_points("a") == {"every": 4}


def test_asha_min_mode_and_missing_metric():
    s = ASHAScheduler(metric="loss", mode="min", max_t=10, grace_period=1, reduction_factor=3)
    assert s.on_trial_result("a", {"training_iteration": 1, "loss": 1.0}) == CONTINUE
    assert s.on_trial_result("b", {"training_iteration": 1, "loss": 0.5}) == CONTINUE
    assert s.on_trial_result("c", {"training_iteration": 1, "loss": 2.0}) == STOP
    assert s.on_trial_result("d", {"training_iteration": 1}) == CONTINUE  # no metric: no decision


@settings(max_examples=30, deadline=None)
@given(scores=st.lists(st.floats(0, 1), min_size=5, max_size=60), rf=st.sampled_from([2, 3, 4]))
def test_asha_keeps_about_one_in_rf_at_a_rung(scores, rf):
    # Property: of trials reaching the first rung in random order, those continuing are each at or above the
    # (1 - 1/rf) quantile of the earlier ones - so a trial is never stopped when it beats everything before.
    s = ASHAScheduler(metric="acc", mode="max", max_t=100, grace_period=1, reduction_factor=rf)
    seen = []
    for i, v in enumerate(scores):
        decision = s.on_trial_result(str(i), result(1, v))
        if seen and v > max(seen):
            assert decision == CONTINUE
        if seen and v < np.percentile(seen, (1 - 1 / rf) * 100):
            assert decision == STOP
        seen.append(v)


def test_hyperband_brackets_stop_less_aggressively_as_they_go():
    s = HyperBandScheduler(metric="acc", mode="max", max_t=27, grace_period=1, reduction_factor=3)
    assert len(s.brackets) == 4
    for i in range(8):
        s.on_trial_add(str(i), {})
    # Trials go to brackets in turn; the first bracket judges at t=1, the second only from t=3.
    assert s.on_trial_result("0", result(1, 0.9)) == CONTINUE
    assert s.on_trial_result("4", result(1, 0.1)) == STOP          # bracket 0, worse at rung 1
    assert s.on_trial_result("1", result(1, 0.9)) == CONTINUE
    assert s.on_trial_result("5", result(1, 0.1)) == CONTINUE      # bracket 1 has no rung at 1
    assert s.on_trial_result("1", result(3, 0.9)) == CONTINUE
    assert s.on_trial_result("5", result(3, 0.1)) == STOP


def test_median_stopping_rule():
    s = MedianStoppingRule(metric="acc", mode="max", grace_period=2, min_samples_required=2)
    for t in range(1, 5):
        s.on_trial_result("a", result(t, 0.8))
        s.on_trial_result("b", result(t, 0.6))
    assert s.on_trial_result("c", result(1, 0.1)) == CONTINUE   # grace period
    assert s.on_trial_result("c", result(2, 0.75)) == CONTINUE  # above median of means (0.7)
    # others' running means: a 0.8, b 0.6, c 0.425 -> median 0.6
    assert s.on_trial_result("d", result(2, 0.55)) == STOP
    assert s.on_trial_result("e", result(2, 0.62)) == CONTINUE


def test_pbt_exploits_top_trials_and_explores_config():
    pbt = PopulationBasedTraining(metric="acc", mode="max", perturbation_interval=2, quantile_fraction=0.25,
                                  hyperparam_mutations={"lr": tune.uniform(0.0, 1.0), "opt": ["a", "b", "c"]},
                                  resample_probability=0.0, seed=0)
    for i in range(4):
        pbt.on_trial_add(str(i), {"lr": 0.5, "opt": "b", "fixed": i})
    # Iteration 1: below the interval, nobody exploits.
    for i in range(4):
        assert pbt.on_trial_result(str(i), result(1, i / 10, has_checkpoint=True)) == CONTINUE
    # Iteration 2: trial 0 is the worst quarter; trial 3 the best.
    decisions = {str(i): pbt.on_trial_result(str(i), result(2, i / 10, has_checkpoint=True)) for i in range(4)}
    assert decisions["1"] == decisions["2"] == decisions["3"] == CONTINUE
    d = decisions["0"]
    assert isinstance(d, Exploit) and d.donor == "3"
    assert d.config["fixed"] == 3                        # the donor's config ...
    assert d.config["lr"] in (pytest.approx(0.6), pytest.approx(0.4))  # ... perturbed by 1.2 or 0.8
    assert d.config["opt"] in ("a", "c")                 # a neighbour in the list
    assert pbt.configs["0"] == d.config


def test_pbt_needs_a_donor_with_a_checkpoint_and_valid_arguments():
    pbt = PopulationBasedTraining(metric="acc", mode="max", perturbation_interval=1,
                                  hyperparam_mutations={"lr": [1, 2]}, seed=0)
    for i in range(4):
        pbt.on_trial_add(str(i), {"lr": 1})
        pbt.on_trial_result(str(i), result(1, i, has_checkpoint=False))
    assert pbt.on_trial_result("0", result(2, 0, has_checkpoint=False)) == CONTINUE
    with pytest.raises(ValueError, match="hyperparam_mutations"):
        PopulationBasedTraining(metric="acc", mode="max")
    with pytest.raises(ValueError, match="quantile_fraction"):
        PopulationBasedTraining(hyperparam_mutations={"a": [1]}, quantile_fraction=0.9)


@pytest.mark.parametrize("make", [
    lambda: ASHAScheduler(grace_period=0),
    lambda: ASHAScheduler(max_t=1, grace_period=5),
    lambda: ASHAScheduler(reduction_factor=1),
    lambda: ASHAScheduler(mode="best"),
    lambda: MedianStoppingRule(min_samples_required=0),
])
def test_bad_scheduler_arguments(make):
    with pytest.raises(ValueError):
        make()
