"""Helpers under Ray's `ray.util` names, so code written for Ray imports them unchanged."""


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the named actors in this job's namespace (or, with `all_namespaces`, every one as
    `{"name", "namespace"}`), as Ray's `ray.util.list_named_actors`."""
    from p2pcompute.util.named_actors import list_named_actors as _list
    return _list(all_namespaces)

from p2pcompute.util.progress import progress  # noqa: E402,F401  (`p2pcompute.util.progress(refs)`)
