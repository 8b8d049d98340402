"""numpy models for `mlkit.train`: usable alone (`fit`/`predict`/`score`) and inside a training loop
(`fit(X_shard, y_shard, distributed=True)`), or from the driver (`fit_distributed(X, y, num_workers=N)`).

Hyperparameters follow scikit-learn (`get_params`/`set_params`); learned arrays are `get_weights()`.
"""

from p2pcompute.mlkit.train.models.base import Estimator, GradientModel, Optimizer
from p2pcompute.mlkit.train.models.kmeans import KMeans
from p2pcompute.mlkit.train.models.linear import LinearRegression, LogisticRegression, Ridge, SoftmaxRegression
from p2pcompute.mlkit.train.models.mlp import MLPClassifier

__all__ = ["Estimator", "GradientModel", "KMeans", "LinearRegression", "LogisticRegression", "MLPClassifier",
           "Optimizer", "Ridge", "SoftmaxRegression"]
