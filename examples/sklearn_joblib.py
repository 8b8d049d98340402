"""scikit-learn's grid search on the cluster through joblib, with no change to the scikit-learn code.

    python examples/sklearn_joblib.py

`joblib.parallel_backend("p2pcompute")` makes `n_jobs=-1` mean every CPU of the p2pcompute cluster: the
cross-validation fits run in pool actors on any peer. Prints the best parameters, the cross-validated score
and the test-set accuracy, and how long the search took.
"""

from __future__ import annotations

import time

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

import p2pcompute as p2p
import p2pcompute.mlkit.pool  # noqa: F401 - registers the "p2pcompute" joblib backend


def main() -> None:
    p2p.init()
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [1e-4, 1e-3, 1e-2]}
    search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1)
    t0 = time.perf_counter()
    with joblib.parallel_backend("p2pcompute"):
        search.fit(X_train, y_train)
    elapsed = time.perf_counter() - t0
    print(f"{len(search.cv_results_['params'])} candidates x 3 folds on {int(p2p.cluster_resources()['CPU'])} "
          f"cluster CPUs in {elapsed:.1f} s")
    print(f"best parameters: {search.best_params_}; cross-validated accuracy {search.best_score_:.3f}")
    print(f"test accuracy: {search.score(X_test, y_test):.3f}")


if __name__ == "__main__":
    main()
