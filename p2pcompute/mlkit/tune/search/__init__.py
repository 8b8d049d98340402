"""Search algorithms: random (`BasicVariantGenerator`), `TPESearch` (numpy), `OptunaSearch` (any Optuna
sampler), and `ConcurrencyLimiter`. Grid points are expanded by the Tuner for every searcher."""

from .searcher import BasicVariantGenerator, ConcurrencyLimiter, RandomSearch, Searcher
from .tpe import TPESearch


def __getattr__(name):
    if name == "OptunaSearch":
        from .optuna import OptunaSearch
        return OptunaSearch
    raise AttributeError(name)


__all__ = ["Searcher", "BasicVariantGenerator", "RandomSearch", "ConcurrencyLimiter", "TPESearch", "OptunaSearch"]
