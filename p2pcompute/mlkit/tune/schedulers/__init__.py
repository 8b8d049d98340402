"""Trial schedulers: FIFO, ASHA, (asynchronous) HyperBand, median stopping, population based training.
Each is a pure decision object; see `base.py` for the interface."""

from .asha import ASHAScheduler, AsyncHyperBandScheduler, HyperBandScheduler
from .base import CONTINUE, STOP, Exploit, FIFOScheduler, TrialScheduler
from .median import MedianStoppingRule
from .pbt import PopulationBasedTraining

__all__ = ["TrialScheduler", "FIFOScheduler", "ASHAScheduler", "AsyncHyperBandScheduler", "HyperBandScheduler",
           "MedianStoppingRule", "PopulationBasedTraining", "CONTINUE", "STOP", "Exploit"]
