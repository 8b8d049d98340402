"""`ParameterServer`: weights held by actors, workers pushing gradients — synchronous or asynchronous SGD.

Theory of operation. The weights (one array, or a dict of named arrays) are flattened into one float vector
and cut into `num_shards` contiguous slices, each held by a `_PSShard` actor (an async actor, so its methods
run one at a time on its event loop and need no locks). A worker pulls the weights, computes a gradient,
and pushes it; each shard applies its slice of the gradient.

- **async** (Hogwild-style, as in the seed's parameter-server story): a push is applied at once. The
  gradient was computed on weights of some earlier *version*; the difference between the shard's version
  when it applies the push and that version is the push's **staleness**, counted in `stats()`.
- **sync**: each shard sums the pushes of one round and, when all `num_workers` have arrived, applies
  their mean and starts the next round; a push returns only then, so every worker's next pull sees the same
  weights. A push computed on an old version is refused (it would silently make the round stale).

`ParameterServer` itself is a small picklable handle (actor handles and the weights' layout): pass it to tasks
and actors, which call `pull`/`push` on the shards directly — weights and gradients never pass through the
driver. `train(grad_fn, data_shards, num_steps)` is the ready-made loop: one task per worker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

import p2pcompute as p2p


@dataclass
class PSStats:
    """Counters over all shards. Staleness is per applied push (async mode; always 0 in sync mode)."""

    mode: str
    pushes: int
    updates: int  # optimizer steps applied (sync: one per round; async: one per push)
    staleness_mean: float
    staleness_max: int
    staleness_histogram: dict[int, int] = field(default_factory=dict)


class _PSShard:
    """One slice of the weights and its optimizer state."""

    def __init__(self, weights: np.ndarray, mode: str, num_workers: int, lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.w = np.array(weights, dtype=np.float64, copy=True)
        self.mode, self.num_workers = mode, num_workers
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = np.zeros_like(self.w)
        self.version = 0
        self.pushes = 0
        self.staleness: dict[int, int] = {}
        self.round_sum = np.zeros_like(self.w)
        self.round_count = 0
        self.round_done: asyncio.Event | None = None

    def _apply(self, grad: np.ndarray) -> None:
        if self.weight_decay:
            grad = grad + self.weight_decay * self.w
        if self.momentum:
            self.velocity *= self.momentum
            self.velocity += grad
            grad = self.velocity
        self.w -= self.lr * grad
        self.version += 1

    async def push(self, grad: np.ndarray, base_version: int) -> int:
        if grad.shape != self.w.shape:
            raise ValueError(f"gradient slice has shape {grad.shape}, the weights' slice {self.w.shape}")
        self.pushes += 1
        if self.mode == "async":
            stale = self.version - base_version
            self.staleness[stale] = self.staleness.get(stale, 0) + 1
            self._apply(grad)
            return self.version
        if base_version != self.version:
            raise ValueError(f"sync parameter server: a gradient computed on version {base_version} arrived during "
                             f"round {self.version}; pull the weights after each push")
        if self.round_done is None:
            self.round_done = asyncio.Event()
        done = self.round_done
        self.round_sum += grad
        self.round_count += 1
        self.staleness[0] = self.staleness.get(0, 0) + 1
        if self.round_count == self.num_workers:
            self._apply(self.round_sum / self.num_workers)
            self.round_sum[...] = 0.0
            self.round_count = 0
            self.round_done = None
            done.set()
        else:
            await done.wait()
        return self.version

    async def pull(self) -> tuple[np.ndarray, int]:
        return self.w.copy(), self.version

    async def push_pull(self, grad: np.ndarray, base_version: int) -> tuple[np.ndarray, int]:
        await self.push(grad, base_version)
        return self.w.copy(), self.version

    async def set_weights(self, weights: np.ndarray) -> int:
        self.w = np.array(weights, dtype=np.float64, copy=True)
        self.version += 1
        return self.version

    async def stats(self) -> dict:
        return {"pushes": self.pushes, "updates": self.version, "staleness": dict(self.staleness)}


_RemoteShard = p2p.remote(_PSShard)


class ParameterServer:
    """Weights on `num_shards` actors; `pull`, `push`, `push_pull` from anywhere; `train` to run workers."""

    def __init__(self, weights, *, mode: str = "async", num_workers: int = 1, lr: float = 0.1,
                 momentum: float = 0.0, weight_decay: float = 0.0, num_shards: int = 1, name: str | None = None):
        if mode not in ("sync", "async"):
            raise ValueError(f"ParameterServer mode must be 'sync' or 'async', not {mode!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be an int >= 1, got {num_shards!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if isinstance(weights, dict):
            self._names = list(weights)
            arrays = [np.asarray(weights[k]) for k in self._names]
        else:
            self._names = None
            arrays = [np.asarray(weights)]
        for a in arrays:
            if not np.issubdtype(a.dtype, np.number):
                raise TypeError(f"parameter server weights must be numeric arrays, got dtype {a.dtype}")
        self._shapes = [a.shape for a in arrays]
        flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
        num_shards = min(num_shards, max(flat.size, 1))
        edges = np.linspace(0, flat.size, num_shards + 1).astype(int)
        self._bounds = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
        self.mode, self.num_workers = mode, num_workers
        self._shards = [_RemoteShard.options(num_cpus=0).remote(flat[a:b], mode, num_workers, lr, momentum,
                                                                weight_decay) for a, b in self._bounds]

    # ---- layout ------------------------------------------------------------------------------------------

    def _flatten(self, grads) -> np.ndarray:
        if self._names is not None:
            if not isinstance(grads, dict) or set(grads) != set(self._names):
                raise ValueError(f"gradients must be a dict with keys {self._names}")
            parts = [np.asarray(grads[k], dtype=np.float64) for k in self._names]
        else:
            parts = [np.asarray(grads, dtype=np.float64)]
        for part, shape in zip(parts, self._shapes):
            if part.shape != shape:
                raise ValueError(f"gradient of shape {part.shape} for weights of shape {shape}")
        return np.concatenate([p.ravel() for p in parts])

    def _unflatten(self, flat: np.ndarray):
        out, start = [], 0
        for shape in self._shapes:
            size = int(np.prod(shape))
            out.append(flat[start:start + size].reshape(shape))
            start += size
        return dict(zip(self._names, out)) if self._names is not None else out[0]

    # ---- operations (callable from the driver, tasks and actors) ------------------------------------------

    def pull(self) -> tuple[object, list[int]]:
        """The current weights and the version of each shard they came from."""
        parts = p2p.get([s.pull.remote() for s in self._shards])
        return self._unflatten(np.concatenate([w for w, _ in parts])), [v for _, v in parts]

    def get_weights(self):
        return self.pull()[0]

    def push(self, grads, versions: list[int]) -> list[int]:
        """Apply `grads` (computed on weights of `versions`); returns the shards' new versions. In sync mode
        this returns once the round is complete."""
        flat = self._flatten(grads)
        return p2p.get([s.push.remote(flat[a:b], v) for s, (a, b), v in zip(self._shards, self._bounds, versions)])

    def push_pull(self, grads, versions: list[int]) -> tuple[object, list[int]]:
        """`push`, then the weights after it, in one call per shard."""
        flat = self._flatten(grads)
        parts = p2p.get([s.push_pull.remote(flat[a:b], v)
                         for s, (a, b), v in zip(self._shards, self._bounds, versions)])
        return self._unflatten(np.concatenate([w for w, _ in parts])), [v for _, v in parts]

    def set_weights(self, weights) -> None:
        flat = self._flatten(weights)
        p2p.get([s.set_weights.remote(flat[a:b]) for s, (a, b) in zip(self._shards, self._bounds)])

    def stats(self) -> PSStats:
        parts = p2p.get([s.stats.remote() for s in self._shards])
        hist: dict[int, int] = {}
        for part in parts:
            for k, v in part["staleness"].items():
                hist[int(k)] = hist.get(int(k), 0) + v
        total = sum(hist.values())
        mean = sum(k * v for k, v in hist.items()) / total if total else 0.0
        return PSStats(self.mode, pushes=parts[0]["pushes"] if parts else 0,
                       updates=parts[0]["updates"] if parts else 0, staleness_mean=mean,
                       staleness_max=max(hist) if hist else 0, staleness_histogram=dict(sorted(hist.items())))

    def shutdown(self) -> None:
        for s in self._shards:
            p2p.kill(s)

    # ---- the ready-made loop -----------------------------------------------------------------------------

    def train(self, grad_fn, data_shards: list, num_steps: int, *, num_cpus_per_worker: float = 1) -> dict:
        """Run `len(data_shards)` workers, each `num_steps` times: pull, `grad_fn(weights, shard)`, push.

        Returns `{"weights", "stats", "wall_s"}`. In sync mode `len(data_shards)` must equal `num_workers`.
        """
        if self.mode == "sync" and len(data_shards) != self.num_workers:
            raise ValueError(f"sync mode waits for {self.num_workers} pushes a round; got {len(data_shards)} shards")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        start = time.perf_counter()
        refs = [_ps_worker.options(num_cpus=num_cpus_per_worker).remote(self, grad_fn, p2p.put(shard), num_steps)
                for shard in data_shards]
        p2p.get(refs)
        return {"weights": self.get_weights(), "stats": self.stats(), "wall_s": time.perf_counter() - start}


@p2p.remote
def _ps_worker(ps: ParameterServer, grad_fn, shard, num_steps: int) -> int:
    weights, versions = ps.pull()
    for _ in range(num_steps):
        weights, versions = ps.push_pull(grad_fn(weights, shard), versions)
    return num_steps
