"""numpy models of mlkit.train: they learn (fixed seeds), follow scikit-learn's conventions, reject bad input,
match scikit-learn's one-vs-rest accuracy, and a data-parallel fit across workers gives the weights of the
single-process fit within 1e-6."""

from __future__ import annotations

import numpy as np
import pytest

from p2pcompute.mlkit.train import models as M

pytestmark = [pytest.mark.mlkit]


def _three_classes(n=600, d=6, seed=0):
    """Three Gaussian blobs, linearly separable up to some overlap."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.5, size=(3, d))
    y = rng.integers(0, 3, size=n)
    X = centers[y] + rng.normal(0, 1.0, size=(n, d))
    return X, np.array(["a", "b", "c"])[y]


def test_classifiers_learn_three_classes():
    X, y = _three_classes()
    X_train, y_train, X_test, y_test = X[:450], y[:450], X[450:], y[450:]
    for model in (M.LogisticRegression(), M.SoftmaxRegression(), M.MLPClassifier(hidden_layer_sizes=(16,),
                                                                                  max_iter=150)):
        model.fit(X_train, y_train)
        assert list(model.classes_) == ["a", "b", "c"]
        assert model.score(X_test, y_test) > 0.9, type(model).__name__
        proba = model.predict_proba(X_test)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert (model.classes_[proba.argmax(axis=1)] == model.predict(X_test)).all()


def test_binary_logistic_regression_uses_one_column():
    X, y = _three_classes()
    yb = (y == "a").astype(int)
    model = M.LogisticRegression().fit(X, yb)
    assert model.get_weights()["W"].shape == (6, 1)
    assert model.score(X, yb) > 0.95
    assert model.predict_proba(X).shape == (len(X), 2)


def test_linear_and_ridge_regression_solve_least_squares():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4))
    w = np.array([1.5, -2.0, 0.0, 3.0])
    y = X @ w + 0.7 + rng.normal(0, 0.01, size=200)
    lin = M.LinearRegression().fit(X, y)
    np.testing.assert_allclose(lin.coef_, w, atol=0.01)
    assert abs(lin.intercept_ - 0.7) < 0.01 and lin.score(X, y) > 0.999
    ridge = M.Ridge(alpha=50.0).fit(X, y)
    assert np.linalg.norm(ridge.coef_) < np.linalg.norm(lin.coef_)  # shrunk towards zero


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    X = np.concatenate([c + rng.normal(0, 0.5, size=(100, 2)) for c in centers])
    km = M.KMeans(n_clusters=3).fit(X)
    found = km.cluster_centers_[np.argsort(km.cluster_centers_[:, 0] * 100 + km.cluster_centers_[:, 1])]
    np.testing.assert_allclose(found, centers[[0, 2, 1]], atol=0.2)
    assert len(set(km.predict(X[:100]))) == 1
    assert km.score(X) == pytest.approx(-km.inertia_)


def test_hyperparameters_follow_scikit_learn():
    model = M.LogisticRegression(alpha=0.1)
    assert model.get_params()["alpha"] == 0.1
    model.set_params(max_iter=5)
    assert model.max_iter == 5
    with pytest.raises(ValueError, match="no hyperparameter"):
        model.set_params(nope=1)
    sklearn_base = pytest.importorskip("sklearn.base")
    assert sklearn_base.clone(model).get_params() == model.get_params()


def test_bad_input_is_refused_with_a_reason():
    X, y = _three_classes(n=30)
    with pytest.raises(ValueError, match="not fitted"):
        M.SoftmaxRegression().predict(X)
    with pytest.raises(ValueError, match="2-d"):
        M.LogisticRegression().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="one label per row"):
        M.LogisticRegression().fit(X, y[:-1])
    with pytest.raises(ValueError, match="two classes"):
        M.LogisticRegression().fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="NaN"):
        M.Ridge().fit(np.full((3, 2), np.nan), np.zeros(3))
    fitted = M.LogisticRegression(max_iter=3).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :2])
    with pytest.raises(ValueError, match="n_clusters"):
        M.KMeans(n_clusters=100).fit(X)
    with pytest.raises(ValueError, match="optimizer"):
        M.LogisticRegression(optimizer="sgdx").fit(X, y)


def test_one_vs_rest_matches_scikit_learn_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    multiclass = pytest.importorskip("sklearn.multiclass")
    X, y = datasets.make_classification(n_samples=3000, n_features=20, n_informative=8, n_classes=3,
                                        n_clusters_per_class=1, random_state=7)
    X = (X - X.mean(0)) / X.std(0)
    X_train, y_train, X_test, y_test = X[:2000], y[:2000], X[2000:], y[2000:]
    ours = M.LogisticRegression().fit(X_train, y_train).score(X_test, y_test)
    ref = multiclass.OneVsRestClassifier(linear_model.LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    theirs = ref.score(X_test, y_test)
    assert ours > 0.7
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


CASES = {
    "logistic_ovr": lambda: M.LogisticRegression(max_iter=80),
    "logistic_binary": lambda: M.LogisticRegression(max_iter=80),
    "softmax": lambda: M.SoftmaxRegression(max_iter=80),
    "ridge": lambda: M.Ridge(alpha=2.0),
    "mlp": lambda: M.MLPClassifier(hidden_layer_sizes=(8,), max_iter=40),
    "kmeans": lambda: M.KMeans(n_clusters=3),
}


@pytest.mark.integration
@pytest.mark.parametrize("case,num_workers", [("logistic_ovr", 3), ("logistic_binary", 2), ("softmax", 2),
                                              ("ridge", 3), ("mlp", 2), ("kmeans", 3)])
def test_distributed_fit_equals_single_process_fit(ml_cluster, tmp_path, case, num_workers):
    X, y = _three_classes(n=301)  # 301 rows: shards of unequal size
    if case == "logistic_binary":
        y = (y == "b").astype(int)
    if case == "ridge":
        y = X @ np.arange(X.shape[1]) + 1.0
    if case == "kmeans":
        y = None
    single = CASES[case]().fit(X, y) if y is not None else CASES[case]().fit(X)
    dist = CASES[case]().fit_distributed(X, y, num_workers=num_workers, resources_per_worker={"CPU": 0},
                                         storage_path=str(tmp_path))
    ws, wd = single.get_weights(), dist.get_weights()
    assert sorted(ws) == sorted(wd)
    for name in ws:
        assert np.max(np.abs(ws[name] - wd[name])) <= 1e-6, name
    assert getattr(single, "n_iter_", None) == getattr(dist, "n_iter_", None)
    if case == "ridge":
        np.testing.assert_allclose(single.predict(X), dist.predict(X), atol=1e-6)
    else:
        np.testing.assert_array_equal(single.predict(X), dist.predict(X))
