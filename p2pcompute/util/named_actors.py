"""`list_named_actors()`: the names in the cluster's name table, as Ray's `ray.util.list_named_actors`."""

from __future__ import annotations

from p2pcompute.auto_init import runtime


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of live named actors in this job's namespace (`init(namespace=...)`, else "default"); with
    `all_namespaces=True`, `{"name": ..., "namespace": ...}` for every named actor in the cluster.

    Read linearizably from the replicated table, so an actor named (or killed) just before is seen so."""
    if not isinstance(all_namespaces, bool):
        from p2pcompute.errors import InvalidArgumentTypeError
        raise InvalidArgumentTypeError(f"all_namespaces must be True or False, not {all_namespaces!r}")
    from p2pcompute.actor import _default_namespace
    from p2pcompute.runtime.names import DEFAULT_NAMESPACE
    rt = runtime()
    if all_namespaces:
        entries = rt.table(("list_names", ""), linearizable=True) or []
        out = []
        for key, _record in entries:
            namespace, _, name = key.partition("/")
            out.append({"name": name, "namespace": namespace})
        return out
    namespace = _default_namespace() or DEFAULT_NAMESPACE
    entries = rt.table(("list_names", f"{namespace}/"), linearizable=True) or []
    return [key.partition("/")[2] for key, _record in entries]
