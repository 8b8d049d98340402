"""Numpy networks for the policies: a fully connected MLP with hand-written backprop, and Adam.

Theory of operation. Every trainable number of a policy lives in one flat float64 vector. An `MLP` is only a
*layout* over a slice of that vector (which offsets hold which weight matrix); `forward(flat, x)` reads its
slice and `backward(flat, cache, dout)` returns the gradient as a vector of the same length. Keeping the
weights flat is what makes the rest simple: a broadcast is one array in the object store, an evolution
strategies perturbation is `theta + sigma * noise[i:i+n]`, Adam is three vector operations, and a checkpoint
is one array. float64 keeps the finite-difference checks of the gradients tight; the nets are small enough
(a few thousand numbers) that the precision costs nothing measurable next to stepping environments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("tanh", "relu", "linear")


def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    return z


def _act_grad(name: str, h: np.ndarray) -> np.ndarray:
    """Derivative of the activation, written in terms of its *output* h (what the cache keeps)."""
    if name == "tanh":
        return 1.0 - h * h
    if name == "relu":
        return (h > 0).astype(h.dtype)
    return np.ones_like(h)


def orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float) -> np.ndarray:
    """An orthogonal matrix scaled by `gain`: the initialisation PPO implementations use (it trains faster
    and more reliably than uniform initialisation for tanh nets)."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # makes the distribution uniform over orthogonal matrices
    if rows < cols:
        q = q.T
    return gain * q[:rows, :cols]


@dataclass(frozen=True)
class MLP:
    """A layout of dense layers `sizes[0] -> ... -> sizes[-1]` at `offset` in a flat parameter vector.

    Hidden layers use `activation`; the output layer is linear. `out_gain` scales the output layer's
    initialisation (small for a policy head so the first policy is near uniform, 1 for a value head).
    """

    sizes: tuple[int, ...]
    activation: str = "tanh"
    offset: int = 0
    out_gain: float = 1.0

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}")
        if len(self.sizes) < 2 or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"an MLP needs at least an input and an output size, all positive; got {self.sizes}")

    @property
    def num_params(self) -> int:
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    def _slices(self):
        """(weight slice, bias slice, in, out) per layer, as offsets into the flat vector."""
        pos = self.offset
        for i, o in zip(self.sizes[:-1], self.sizes[1:]):
            yield slice(pos, pos + i * o), slice(pos + i * o, pos + i * o + o), i, o
            pos += i * o + o

    def init(self, flat: np.ndarray, rng: np.random.Generator) -> None:
        """Write initial weights into `flat` (orthogonal, gain sqrt(2) hidden and `out_gain` last; zero biases)."""
        layers = list(self._slices())
        for k, (ws, bs, i, o) in enumerate(layers):
            gain = self.out_gain if k == len(layers) - 1 else np.sqrt(2.0)
            flat[ws] = orthogonal(rng, i, o, gain).ravel()
            flat[bs] = 0.0

    def forward(self, flat: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output for a batch `x` [B, in], and the cache `backward` needs (each layer's input)."""
        h = np.asarray(x, dtype=np.float64)
        cache = []
        layers = list(self._slices())
        for k, (ws, bs, i, o) in enumerate(layers):
            cache.append(h)
            z = h @ flat[ws].reshape(i, o) + flat[bs]
            h = z if k == len(layers) - 1 else _act(self.activation, z)
        return h, cache

    def backward(self, flat: np.ndarray, cache: list[np.ndarray], dout: np.ndarray, grad: np.ndarray) -> None:
        """Add d(loss)/d(params) into `grad` (same layout as `flat`), given d(loss)/d(output) `dout`."""
        d = dout
        layers = list(self._slices())
        for k in range(len(layers) - 1, -1, -1):
            ws, bs, i, o = layers[k]
            h = cache[k]
            grad[ws] += (h.T @ d).ravel()
            grad[bs] += d.sum(axis=0)
            if k > 0:
                d = (d @ flat[ws].reshape(i, o).T) * _act_grad(self.activation, h)


class Adam:
    """Adam on a flat vector (Kingma & Ba), minimising: `step(params, grad)` returns the updated params."""

    def __init__(self, size: int, lr: float = 3e-4, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self) -> dict:
        return {"m": self.m.copy(), "v": self.v.copy(), "t": self.t, "lr": self.lr}

    def load(self, state: dict) -> None:
        self.m, self.v, self.t = np.array(state["m"]), np.array(state["v"]), int(state["t"])
        self.lr = float(state.get("lr", self.lr))


def clip_by_global_norm(grad: np.ndarray, max_norm: float | None) -> tuple[np.ndarray, float]:
    """Scale `grad` down so its L2 norm is at most `max_norm`; returns the gradient and its original norm."""
    norm = float(np.sqrt(np.dot(grad, grad)))
    if max_norm is not None and norm > max_norm:
        grad = grad * (max_norm / (norm + 1e-12))
    return grad, norm
