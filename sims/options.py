"""What a simulation run is made of: every knob, parsed from the command line and printed back as one.

A run is fully determined by its `SimOptions` (the seed included), and `SimOptions.argv()` prints the exact
command-line arguments that rebuild them, so every report and every failing seed of a sweep carries the
command that replays it. Parsing errors raise `OptionError` with a message that says what was wrong.

Durations are written with a unit: `250us`, `100ms`, `2s`, `1.5min`. Distributions (`--service`,
`--latency`, and the durations inside `--faults`) are `KIND:ARGS`:

    const:100ms            always 100 ms
    exp:100ms              exponential with mean 100 ms
    uniform:50ms:150ms     uniform between the two
    lognorm:100ms:0.5      lognormal with mean 100 ms and shape sigma 0.5
    pareto:100ms:2.5       Pareto with mean 100 ms and tail index 2.5 (> 1)
    A bare duration (`100ms`) means const.

`--faults` is a comma-separated list of `key=value`; see `FAULT_KEYS` for the meaning of each key.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

MS = 1_000_000
S = 1_000_000_000

_UNITS = (("min", 60 * S), ("ms", MS), ("us", 1_000), ("ns", 1), ("s", S))


class OptionError(ValueError):
    """A command-line option or fault spec the simulator cannot use; the message says which and why."""


def parse_duration_ns(text: str) -> int:
    """'100ms' -> 100_000_000. A unit is required: a bare number is ambiguous."""
    text = text.strip()
    for unit, scale in _UNITS:
        if text.endswith(unit):
            number = text[: -len(unit)]
            try:
                value = float(number)
            except ValueError:
                break
            if not math.isfinite(value) or value < 0:
                break
            return int(round(value * scale))
    raise OptionError(f"{text!r} is not a duration; write it with a unit, like 250us, 100ms, 2s or 1.5min")


def format_duration(ns: int) -> str:
    if ns % S == 0:
        return f"{ns // S}s"
    if ns % MS == 0:
        return f"{ns // MS}ms"
    if ns % 1_000 == 0:
        return f"{ns // 1_000}us"
    return f"{ns}ns"


@dataclass(frozen=True)
class Dist:
    """A distribution of durations in ns; `sample(rng)` draws one (never negative)."""

    kind: str
    a: float  # mean (exp, lognorm, pareto, const) or low (uniform), in ns
    b: float = 0.0  # high (uniform, ns), sigma (lognorm), alpha (pareto)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Dist:
        parts = text.strip().split(":")
        try:
            if len(parts) == 1:
                return cls("const", parse_duration_ns(parts[0]), 0.0, text)
            kind, args = parts[0], parts[1:]
            if kind in ("const", "exp") and len(args) == 1:
                return cls(kind, parse_duration_ns(args[0]), 0.0, text)
            if kind == "uniform" and len(args) == 2:
                low, high = parse_duration_ns(args[0]), parse_duration_ns(args[1])
                if high < low:
                    raise OptionError(f"uniform:{args[0]}:{args[1]}: the high end is below the low end")
                return cls(kind, low, high, text)
            if kind == "lognorm" and len(args) == 2:
                sigma = float(args[1])
                if not 0 <= sigma <= 5:
                    raise OptionError(f"lognorm sigma must be between 0 and 5, not {args[1]}")
                return cls(kind, parse_duration_ns(args[0]), sigma, text)
            if kind == "pareto" and len(args) == 2:
                alpha = float(args[1])
                if not alpha > 1:
                    raise OptionError(f"pareto tail index must be > 1 (else the mean is infinite), not {args[1]}")
                return cls(kind, parse_duration_ns(args[0]), alpha, text)
        except ValueError as exc:
            raise OptionError(f"bad distribution {text!r}: {exc}") from None
        raise OptionError(f"bad distribution {text!r}; use const:D, exp:MEAN, uniform:LOW:HIGH, "
                          f"lognorm:MEAN:SIGMA or pareto:MEAN:ALPHA (durations with units)")

    def mean_ns(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a

    def sampler(self, rng: random.Random):
        """A zero-argument function drawing one sample in integer ns: the hot path calls it per message."""
        kind, a, b = self.kind, self.a, self.b
        if kind == "const":
            value = int(a)
            return lambda: value
        if kind == "exp":
            expo = rng.expovariate
            rate = 1.0 / a if a > 0 else 0.0
            return (lambda: int(expo(rate))) if rate else (lambda: 0)
        if kind == "uniform":
            uni = rng.uniform
            return lambda: int(uni(a, b))
        if kind == "lognorm":
            mu = math.log(a) - b * b / 2 if a > 0 else 0.0
            logn = rng.lognormvariate
            return (lambda: int(logn(mu, b))) if a > 0 else (lambda: 0)
        if kind == "pareto":
            scale = a * (b - 1) / b  # so that the mean is a
            par = rng.paretovariate
            return lambda: int(scale * par(b))
        raise AssertionError(kind)

    def __str__(self) -> str:
        return self.text or f"{self.kind}:{self.a}"


# key -> (kind, default, meaning). "rate": per peer per simulated second; "p": a probability per message;
# "dist": a duration distribution; "dur": a duration.
FAULT_KEYS: dict[str, tuple[str, object, str]] = {
    "crash": ("rate", 0.0, "each up peer crashes at this rate (per peer per second): all its processes and "
                           "their state are lost"),
    "restart": ("rate", 0.0, "each crashed peer restarts at this rate (mean downtime 1/restart s); 0: never"),
    "pause": ("rate", 0.0, "each up peer pauses (SIGSTOP) at this rate: state kept, nothing processed"),
    "pause_for": ("dist", "exp:2s", "how long a pause lasts"),
    "leave": ("rate", 0.0, "each up peer leaves gracefully at this rate (and is gone for good)"),
    "join": ("rate", 0.0, "new peers join at this rate per up peer (through a random live seed)"),
    "kill": ("rate", 0.0, "each up peer loses one random worker process at this rate"),
    "loss": ("p", 0.0, "a membership message is lost; a stream (TCP) message is delayed by a retransmission"),
    "dup": ("p", 0.0, "a membership message is delivered twice"),
    "reorder": ("p", 0.0, "a membership message is delayed by up to reorder_by and may overtake others"),
    "reorder_by": ("dur", "20ms", "the largest extra delay of a reordered message"),
    "partition": ("rate", 0.0, "partitions begin at this rate per up peer; see docs/simulations.md"),
    "partition_for": ("dist", "exp:3s", "how long a partition lasts"),
    "skew": ("dur", "0ms", "each peer's clock is offset by a uniform amount in [-skew, +skew]"),
    "drift": ("p", 0.0, "each peer's clock runs at a rate in [1 - drift, 1 + drift]"),
    "rto": ("dur", "200ms", "the retransmission delay a lost stream message suffers"),
}


@dataclass(frozen=True)
class FaultSpec:
    crash: float = 0.0
    restart: float = 0.0
    pause: float = 0.0
    pause_for: Dist = Dist("exp", 2 * S, 0.0, "exp:2s")
    leave: float = 0.0
    join: float = 0.0
    kill: float = 0.0
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    reorder_by: int = 20 * MS
    partition: float = 0.0
    partition_for: Dist = Dist("exp", 3 * S, 0.0, "exp:3s")
    skew: int = 0
    drift: float = 0.0
    rto: int = 200 * MS
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        values: dict = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in FAULT_KEYS:
                raise OptionError(f"unknown fault {item!r}; known: {', '.join(FAULT_KEYS)}")
            kind = FAULT_KEYS[key][0]
            raw = raw.strip()
            try:
                if kind in ("rate", "p"):
                    value = float(raw)
                    if not math.isfinite(value) or value < 0 or (kind == "p" and value > 1):
                        raise OptionError(f"{key}={raw}: must be {'a probability in [0, 1]' if kind == 'p' else '>= 0'}")
                elif kind == "dist":
                    value = Dist.parse(raw)
                else:
                    value = parse_duration_ns(raw)
            except ValueError as exc:
                raise OptionError(f"fault {key}={raw}: {exc}") from None
            values[key] = value
        return cls(**values, text=",".join(filter(None, (p.strip() for p in text.split(",")))))

    def any_faults(self) -> bool:
        return any((self.crash, self.pause, self.leave, self.join, self.kill, self.partition))

    def __str__(self) -> str:
        return self.text


# A little of everything, short of false death declarations: `--faults ''` turns faults off.
DEFAULT_FAULTS = "crash=0.002,restart=0.5,pause=0.002,pause_for=uniform:100ms:1s,loss=0.01,kill=0.002"

WORKLOADS = ("tasks", "dag", "actors", "names", "mixed", "membership")
BREAKS = ("capacity", "refutation", "refcount", "lineage", "actor-calls")


@dataclass
class SimOptions:
    """One simulation run. Defaults make `python -m sims run` show something meaningful in seconds."""

    peers: int = 100
    seconds: float = 30.0
    seed: int = 1
    workload: str = "tasks"
    load: float = 0.9
    service: Dist = Dist("exp", 100 * MS, 0.0, "exp:100ms")
    choices: int = 2
    cpus: int = 2
    submitters: float = 0.25
    faults: FaultSpec = field(default_factory=lambda: FaultSpec.parse(DEFAULT_FAULTS))
    latency: Dist = Dist("lognorm", 500_000, 0.5, "lognorm:500us:0.5")
    zones: int = 1
    zone_latency: int = 10 * MS
    quiet: float = 0.0  # 0: automatic (see run.py)
    restart_id: str = "new"
    join_mode: str = "prejoin"
    codec: bool = False
    unreliable_streams: bool = False
    view_interval_ms: int = 100  # the runtime's: peer.py refreshes both every 100 ms
    breaks: tuple[str, ...] = ()
    report: str | None = None
    plot: str | None = None

    def validate(self) -> None:
        if not 1 <= self.peers <= 100_000:
            raise OptionError(f"--peers must be between 1 and 100000, not {self.peers}")
        if not 0 < self.seconds <= 86_400:
            raise OptionError(f"--seconds must be > 0, not {self.seconds}")
        if self.workload not in WORKLOADS:
            raise OptionError(f"--workload must be one of {', '.join(WORKLOADS)}, not {self.workload!r}")
        if not 0 <= self.load <= 10:
            raise OptionError(f"--load is a fraction of the cluster's capacity (0 to 10), not {self.load}")
        if self.choices < 1:
            raise OptionError(f"--choices must be >= 1, not {self.choices}")
        if self.cpus < 1:
            raise OptionError(f"--cpus must be >= 1, not {self.cpus}")
        if not 0 < self.submitters <= 1:
            raise OptionError(f"--submitters is the fraction of peers that submit work (0 to 1], not {self.submitters}")
        if self.service.mean_ns() <= 0:
            raise OptionError("--service must have a positive mean")
        if self.restart_id not in ("new", "same"):
            raise OptionError(f"--restart-id must be new or same, not {self.restart_id!r}")
        if self.join_mode not in ("prejoin", "join"):
            raise OptionError(f"--join-mode must be prejoin or join, not {self.join_mode!r}")
        if self.zones < 1:
            raise OptionError(f"--zones must be >= 1, not {self.zones}")
        if self.quiet < 0:
            raise OptionError(f"--quiet must be >= 0, not {self.quiet}")
        for name in self.breaks:
            if name not in BREAKS:
                raise OptionError(f"--break must be one of {', '.join(BREAKS)}, not {name!r}")

    def argv(self) -> list[str]:
        """Command-line arguments that rebuild exactly these options (report and plot paths left out)."""
        default = SimOptions()
        out = ["--peers", str(self.peers), "--seconds", _num(self.seconds), "--seed", str(self.seed),
               "--workload", self.workload]
        pairs = [("--load", _num(self.load), _num(default.load)), ("--service", str(self.service), str(default.service)),
                 ("--choices", str(self.choices), str(default.choices)), ("--cpus", str(self.cpus), str(default.cpus)),
                 ("--submitters", _num(self.submitters), _num(default.submitters)),
                 ("--faults", str(self.faults), str(default.faults)), ("--latency", str(self.latency), str(default.latency)),
                 ("--zones", str(self.zones), "1"), ("--zone-latency", format_duration(self.zone_latency),
                                                      format_duration(default.zone_latency)),
                 ("--quiet", _num(self.quiet), "0"), ("--restart-id", self.restart_id, "new"),
                 ("--join-mode", self.join_mode, "prejoin"),
                 ("--view-interval-ms", str(self.view_interval_ms), str(default.view_interval_ms))]
        for flag, value, dflt in pairs:
            if value != dflt:
                out += [flag, value]
        if self.codec:
            out.append("--codec")
        if self.unreliable_streams:
            out.append("--unreliable-streams")
        for name in self.breaks:
            out += ["--break", name]
        return out

    def replay_command(self) -> str:
        return "python -m sims run " + " ".join(_quote(a) for a in self.argv())

    def describe(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value) \
                if not isinstance(value, tuple) else list(value)
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _quote(arg: str) -> str:
    safe = all(c.isalnum() or c in "-_.:=,/" for c in arg)
    return arg if safe and arg else "'" + arg.replace("'", "'\\''") + "'"
