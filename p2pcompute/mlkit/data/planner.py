"""From a dataset's logical plan to a `Pipeline` of stages (pure apart from the stages' constructors).

A logical plan is a source and a list of operators:

    source: ("reads", name, [read callables]) | ("blocks", name, [(ref, meta)]) | ("union", [Dataset])
    ops:    ("map", op, remote_args)  ("actor_map", op, ctor_args, ctor_kwargs, (min, max), remote_args)
            ("limit", n)  ("all_to_all", name, fn)

Consecutive "map" operators with the same resource options are fused into one task stage, together with
the reads before them; every other operator starts a new stage. A task stage fed by another stage whose
first operator is `map_batches(batch_size=b)` bundles upstream blocks until it has at least b rows.
"""

from __future__ import annotations

from p2pcompute.mlkit.data.executor import ExecOptions, InputStage, Pipeline, TaskMapStage
from p2pcompute.mlkit.data.ops import MapBatches
from p2pcompute.mlkit.data.stages import ActorMapStage, AllToAllStage, LimitStage, UnionStage


class _Pending:
    """A task stage being assembled: its input, the fused operators and their resource options."""

    def __init__(self, reads=None, upstream=None, name=""):
        self.reads = reads
        self.upstream = upstream
        self.names = [name] if name else []
        self.ops: list = []
        self.remote_args: dict | None = None

    def accepts(self, remote_args: dict) -> bool:
        return self.remote_args is None or self.remote_args == remote_args

    def add(self, op, remote_args: dict) -> None:
        self.ops.append(op)
        self.names.append(op.name)
        self.remote_args = remote_args

    def build(self, opts: ExecOptions):
        if self.reads is None and not self.ops:
            return self.upstream
        bundle = None
        if self.reads is None and self.ops and isinstance(self.ops[0], MapBatches):
            bundle = self.ops[0].batch_size
        return TaskMapStage("->".join(self.names), opts, self.ops, reads=self.reads, upstream=self.upstream,
                            bundle_rows=bundle, remote_args=self.remote_args or None)


def build(source: tuple, ops: list, opts: ExecOptions) -> Pipeline:
    kind = source[0]
    if kind == "reads":
        cur = _Pending(reads=list(source[2]), name=source[1])
    elif kind == "blocks":
        cur = _Pending(upstream=InputStage(source[1], opts, list(source[2])))
    elif kind == "union":
        children = [build(ds._source, ds._ops, opts) for ds in source[1]]
        cur = _Pending(upstream=UnionStage("Union", opts, children))
    else:
        raise AssertionError(f"unknown source {kind}")
    for op in ops:
        tag = op[0]
        if tag == "map":
            if not cur.accepts(op[2]):
                cur = _Pending(upstream=cur.build(opts))
            cur.add(op[1], op[2])
            continue
        upstream = cur.build(opts)
        if tag == "actor_map":
            _, mop, ctor_args, ctor_kwargs, (lo, hi), remote_args = op
            stage = ActorMapStage(mop.name, opts, upstream, mop, ctor_args, ctor_kwargs, [], lo, hi,
                                  mop.batch_size, remote_args)
        elif tag == "limit":
            stage = LimitStage(f"Limit[{op[1]}]", opts, upstream, op[1])
        elif tag == "all_to_all":
            stage = AllToAllStage(op[1], opts, upstream, op[2])
        else:
            raise AssertionError(f"unknown operator {tag}")
        cur = _Pending(upstream=stage)
    return Pipeline(cur.build(opts))
