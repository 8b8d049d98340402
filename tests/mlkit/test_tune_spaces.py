"""Search spaces, config generation (grid x samples) and the searchers, as pure objects (no cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.mlkit import tune
from p2pcompute.mlkit.tune.search import BasicVariantGenerator, ConcurrencyLimiter, TPESearch
from p2pcompute.mlkit.tune.spaces import count_grid, flatten_space
from p2pcompute.mlkit.tune.tuner import _ConfigSource

pytestmark = pytest.mark.mlkit

finite = st.floats(-1e6, 1e6, allow_nan=False)
positive = st.floats(1e-6, 1e6, allow_nan=False)


def draws(domain, seed, n=200):
    rng = np.random.default_rng(seed)
    return [domain.sample(rng) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(lo=finite, width=st.floats(1e-3, 1e6), seed=st.integers(0, 2**32 - 1))
def test_uniform_stays_in_bounds_and_spreads(lo, width, seed):
    hi = lo + width
    xs = draws(tune.uniform(lo, hi), seed)
    assert all(isinstance(x, float) and lo <= x <= hi for x in xs)
    # Uniform: about half of the draws fall in each half of the range.
    below = sum(x < lo + width / 2 for x in xs)
    assert 60 < below < 140


@settings(max_examples=40, deadline=None)
@given(lo=positive, decades=st.floats(1, 8), seed=st.integers(0, 2**32 - 1))
def test_loguniform_is_uniform_in_log_space(lo, decades, seed):
    hi = lo * 10 ** decades
    xs = draws(tune.loguniform(lo, hi), seed)
    assert all(lo <= x <= hi for x in xs)
    mid = math.sqrt(lo * hi)  # the geometric midpoint splits a log-uniform draw in half
    assert 60 < sum(x < mid for x in xs) < 140


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(-1000, 1000), width=st.integers(1, 1000), seed=st.integers(0, 2**32 - 1))
def test_randint_excludes_upper(lo, width, seed):
    xs = draws(tune.randint(lo, lo + width), seed)
    assert all(isinstance(x, int) and lo <= x < lo + width for x in xs)
    if width == 1:
        assert set(xs) == {lo}


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(1, 100), factor=st.integers(2, 1000), seed=st.integers(0, 2**32 - 1))
def test_lograndint_in_bounds_and_skewed_low(lo, factor, seed):
    hi = lo * factor
    xs = draws(tune.lograndint(lo, hi), seed)
    assert all(isinstance(x, int) and lo <= x < hi for x in xs)
    assert sum(x < math.sqrt(lo * hi) for x in xs) >= 60  # log-uniform: about half below the geometric mean


@settings(max_examples=30, deadline=None)
@given(lo=st.floats(-100, 100), width=st.floats(1, 100), q=st.sampled_from([0.5, 1.0, 0.25]),
       seed=st.integers(0, 2**32 - 1))
def test_quantized_values_are_multiples_of_q(lo, width, q, seed):
    for x in draws(tune.quniform(lo, lo + width, q), seed, 50):
        assert lo <= x <= lo + width
        assert x == pytest.approx(round(x / q) * q, abs=1e-9) or x in (lo, lo + width)
    for x in draws(tune.qloguniform(1, 1000, 5), seed, 50):
        assert 1 <= x <= 1000 and (x % 5 == 0 or x in (1, 1000))


@settings(max_examples=20, deadline=None)
@given(mean=st.floats(-100, 100), sd=st.floats(0.1, 10), seed=st.integers(0, 2**32 - 1))
def test_randn_mean_and_spread(mean, sd, seed):
    xs = np.array(draws(tune.randn(mean, sd), seed, 2000))
    assert abs(xs.mean() - mean) < 0.15 * sd
    assert 0.85 * sd < xs.std() < 1.15 * sd


@settings(max_examples=20, deadline=None)
@given(cats=st.lists(st.integers(), min_size=1, max_size=6, unique=True), seed=st.integers(0, 2**32 - 1))
def test_choice_draws_every_category(cats, seed):
    xs = draws(tune.choice(cats), seed, 300)
    assert set(xs) == set(cats)


@pytest.mark.parametrize("make, message", [
    (lambda: tune.uniform(2, 1), "lower bound"),
    (lambda: tune.loguniform(0, 1), "positive lower bound"),
    (lambda: tune.randint(3, 3), "lower < upper"),
    (lambda: tune.randint(1.5, 3), "must be an int"),
    (lambda: tune.choice([]), "at least one"),
    (lambda: tune.choice("abc"), "list of values"),
    (lambda: tune.grid_search([]), "at least one"),
    (lambda: tune.randn(0, 0), "sd > 0"),
    (lambda: tune.quniform(0, 1, -1), "q must be positive"),
    (lambda: tune.uniform(float("nan"), 1), "finite"),
])
def test_bad_bounds_say_what_is_wrong(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@settings(max_examples=25, deadline=None)
@given(grids=st.lists(st.integers(1, 4), min_size=0, max_size=3), num_samples=st.integers(1, 5))
def test_grid_times_samples_counts(grids, num_samples):
    space = {"lr": tune.uniform(0, 1), "nested": {}}
    for i, n in enumerate(grids):
        space["nested"][f"g{i}"] = tune.grid_search(list(range(n)))
    expected = num_samples * math.prod(grids)
    assert count_grid(space) == math.prod(grids)
    source = _ConfigSource(space, _searcher(space), num_samples, seed=0)
    configs = []
    while (c := source.next(str(len(configs)))) is not None:
        configs.append(c)
        assert len(configs) <= expected
    assert len(configs) == expected
    # every grid point appears exactly num_samples times
    points = [tuple(c["nested"].get(f"g{i}") for i in range(len(grids))) for c in configs]
    assert all(points.count(p) == num_samples for p in set(points))
    assert len(set(points)) == math.prod(grids)


def _searcher(space, cls=BasicVariantGenerator, **kw):
    s = cls(**kw)
    s.set_search_properties("f", "min", space)
    return s


def test_nested_constants_sample_from_and_ray_grid_dicts():
    space = {"model": {"lr": tune.loguniform(1e-3, 1e-1), "width": 64,
                       "depth": {"grid_search": [1, 2]}},
             "double_lr": tune.sample_from(lambda spec: spec.config.model.lr * 2)}
    source = _ConfigSource(space, _searcher(space), 2, seed=1)
    configs = [source.next(str(i)) for i in range(4)]
    assert source.next("x") is None and source.finished
    for c in configs:
        assert c["model"]["width"] == 64 and 1e-3 <= c["model"]["lr"] <= 1e-1
        assert c["double_lr"] == pytest.approx(2 * c["model"]["lr"])
    assert sorted(c["model"]["depth"] for c in configs) == [1, 1, 2, 2]
    assert set(flatten_space(space)) == {("model", "lr"), ("model", "width"), ("model", "depth"), ("double_lr",)}


def test_points_to_evaluate_come_first_then_sampling():
    space = {"a": tune.uniform(0, 1), "b": tune.choice(["x", "y"])}
    s = _searcher(space, points_to_evaluate=[{"a": 0.5, "b": "y"}, {"a": 0.25}], seed=3)
    first, second = s.suggest("0"), s.suggest("1")
    assert first == {("a",): 0.5, ("b",): "y"}
    assert second[("a",)] == 0.25 and second[("b",)] in ("x", "y")


def test_concurrency_limiter_holds_suggestions_until_trials_complete():
    space = {"a": tune.uniform(0, 1)}
    limiter = ConcurrencyLimiter(_searcher(space), max_concurrent=2)
    limiter.set_search_properties("f", "min", space)
    assert isinstance(limiter.suggest("0"), dict) and isinstance(limiter.suggest("1"), dict)
    assert limiter.suggest("2") is None
    limiter.on_trial_complete("0", {"f": 1.0})
    assert isinstance(limiter.suggest("2"), dict)
    with pytest.raises(ValueError, match="max_concurrent"):
        ConcurrencyLimiter(_searcher(space), 0)


def branin(x, y):
    return (y - 5.1 / (4 * math.pi ** 2) * x ** 2 + 5 / math.pi * x - 6) ** 2 \
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10


def best_of(searcher, budget=40):
    space = {"x": tune.uniform(-5, 10), "y": tune.uniform(0, 15)}
    searcher.set_search_properties("f", "min", space)
    best = float("inf")
    for i in range(budget):
        v = searcher.suggest(str(i))
        f = branin(v[("x",)], v[("y",)])
        best = min(best, f)
        searcher.on_trial_complete(str(i), {"f": f})
    return best


def test_tpe_beats_random_on_branin_over_seeds():
    # Branin's minimum is 0.398. With 40 evaluations, TPE's best should be clearly closer to it than random's.
    seeds = range(10)
    tpe = [best_of(TPESearch(seed=s)) for s in seeds]
    rnd = [best_of(BasicVariantGenerator(seed=s)) for s in seeds]
    assert np.mean(tpe) < 0.7 * np.mean(rnd), (tpe, rnd)
    assert sum(t < r for t, r in zip(tpe, rnd)) >= 7, (tpe, rnd)


def test_tpe_handles_every_domain_kind_and_max_mode():
    space = {"lr": tune.loguniform(1e-4, 1e-1), "n": tune.randint(1, 9), "k": tune.lograndint(1, 100),
             "q": tune.quniform(0, 1, 0.1), "opt": tune.choice(["sgd", "adam"]), "z": tune.randn()}
    s = TPESearch(seed=0, n_initial_points=3)
    s.set_search_properties("acc", "max", space)
    for i in range(12):
        v = s.suggest(str(i))
        for path, value in v.items():
            assert flatten_space(space)[path].contains(value), (path, value)
        # accuracy is best for adam with large n: TPE must come to prefer it
        s.on_trial_complete(str(i), {"acc": (v[("opt",)] == "adam") + v[("n",)] / 10})
    late = [s.suggest(f"late{i}") for i in range(20)]
    assert sum(v[("opt",)] == "adam" for v in late) >= 12


def test_optuna_adapter_searches():
    pytest.importorskip("optuna")
    from p2pcompute.mlkit.tune.search import OptunaSearch
    s = OptunaSearch(seed=0)
    assert best_of(s, budget=30) < 5.0
    import pickle
    restored = pickle.loads(pickle.dumps(s))  # resumable: history replayed into a fresh study
    assert len(restored.study().trials) == 30
    space = {"opt": tune.choice(["a", "b"]), "n": tune.randint(1, 4)}
    s2 = OptunaSearch(seed=1)
    s2.set_search_properties("f", "min", space)
    v = s2.suggest("0")
    assert v[("opt",)] in ("a", "b") and 1 <= v[("n",)] < 4
