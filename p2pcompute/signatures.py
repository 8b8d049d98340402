"""Call-site argument checking: `.remote(...)` binds its arguments to the function's (or method's) signature.

As in Ray, too many or too few arguments, or an unknown keyword, raise `TypeError` where `.remote()` is
called, not later from `get`. A signature travels with actor handles as plain data (`to_plain`), since a
handle may be rebuilt in a process that never imported the actor's class (from the name table, say).

The check is on the hot path of every call, so a call that fits is recognised from precomputed names and
counts (about a microsecond); only a call that does not fit goes through `Signature.bind`, for its message.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
          inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class CallShape:
    """What a call must look like. `positional_min/max`: bounds on a call with positional arguments only
    (max None for *args); `needs_keywords`: a keyword-only parameter has no default, so such a call fails."""

    signature: inspect.Signature
    positional_min: int
    positional_max: int | None
    needs_keywords: bool
    positional_names: tuple = ()       # positional parameters, in order (positional-only ones too)
    keyword_names: frozenset = frozenset()  # names a keyword argument may use
    required: frozenset = frozenset()   # parameters without a default (positional or keyword-only)
    any_keyword: bool = False           # **kwargs

    def check(self, args: tuple, kwargs: dict, what: str) -> None:
        n = len(args)
        if not kwargs:
            if not self.needs_keywords and n >= self.positional_min and (
                    self.positional_max is None or n <= self.positional_max):
                return
        elif self._fits_with_keywords(n, kwargs):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{what}{self.signature} cannot take these arguments: {exc}") from None

    def _fits_with_keywords(self, n: int, kwargs: dict) -> bool:
        if self.positional_max is not None and n > self.positional_max:
            return False
        taken = self.positional_names[:n]
        for name in kwargs:
            if name in taken or (name not in self.keyword_names and not self.any_keyword):
                return False
            if name in self.positional_names and name not in self.keyword_names:
                return False  # a positional-only name passed by keyword (into **kwargs): Python's bind decides
        for name in self.required:
            if name not in kwargs and name not in taken:
                return False
        return True


def shape_of(signature: inspect.Signature | None) -> CallShape | None:
    if signature is None:
        return None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in _KINDS[:2]]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    var = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    needs_kw = any(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
                   for p in params)
    keyword = frozenset(p.name for p in params
                        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    must = frozenset(p.name for p in params if p.default is inspect.Parameter.empty and p.kind in
                     (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                      inspect.Parameter.KEYWORD_ONLY))
    return CallShape(signature, len(required), None if var else len(positional), needs_kw,
                     tuple(p.name for p in positional), keyword, must,
                     any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))


def of_function(fn: Any) -> CallShape | None:
    """The call shape of a plain callable; None when Python cannot tell (some builtins): no check then."""
    try:
        return shape_of(inspect.signature(fn))
    except (TypeError, ValueError):
        return None


def of_method(cls: type, name: str) -> CallShape | None:
    """The call shape of `instance.name(...)`: `self` (or `cls`) is not the caller's to pass."""
    try:
        raw = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    if isinstance(raw, staticmethod):
        return of_function(raw.__func__)
    if isinstance(raw, classmethod):
        return _drop_first(raw.__func__)
    if inspect.isfunction(raw):
        return _drop_first(raw)
    return None  # a callable attribute of some other kind: let the call itself decide


def of_constructor(cls: type) -> CallShape | None:
    init = inspect.getattr_static(cls, "__init__", None)
    if init is None or init is object.__init__:
        # No constructor of its own: object() takes no arguments (unless __new__ says otherwise).
        new = inspect.getattr_static(cls, "__new__", None)
        if new is None or new is object.__new__:
            return shape_of(inspect.Signature([]))
        return None
    if inspect.isfunction(init):
        return _drop_first(init)
    return None


def _drop_first(fn) -> CallShape | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if params and params[0].kind in _KINDS[:2]:
        params = params[1:]
    elif not params or params[0].kind is not inspect.Parameter.VAR_POSITIONAL:
        return None  # a method that cannot take `self`: Python reports that better at the call
    return shape_of(sig.replace(parameters=params))


# ---- as plain data, to travel in handles ------------------------------------------------------------------

_DEFAULT = "<default>"


def to_plain(shape: CallShape | None) -> list | None:
    if shape is None:
        return None
    return [[p.name, _KINDS.index(p.kind), p.default is not inspect.Parameter.empty]
            for p in shape.signature.parameters.values()]


def from_plain(plain: Any) -> CallShape | None:
    """The call shape a method's plain signature describes. Asked on every actor method call (the handle
    looks its methods up by name), so shapes are kept by signature: building one costs ~50 us."""
    if not isinstance(plain, list):
        return None
    seen = _BY_LIST.get(id(plain))
    if seen is not None and seen[0] is plain:  # the same list as last time (a handle's own method table)
        return seen[1]
    try:
        key = tuple((name, kind, bool(has_default)) for name, kind, has_default in plain)
        hash(key)
    except (TypeError, ValueError):
        return None  # from a newer or older version: skip the check rather than refuse the call
    shape = _SHAPES.get(key, _MISSING)
    if shape is _MISSING:
        try:
            params = [inspect.Parameter(name, _KINDS[kind], default=_Default() if has_default
                                        else inspect.Parameter.empty) for name, kind, has_default in key]
            shape = shape_of(inspect.Signature(params))
        except (TypeError, ValueError, IndexError):
            shape = None  # from a newer or older version: skip the check rather than refuse the call
        if len(_SHAPES) >= 4096:
            _SHAPES.clear()
        _SHAPES[key] = shape
    if len(_BY_LIST) >= 4096:
        _BY_LIST.clear()
    _BY_LIST[id(plain)] = (plain, shape)  # holds the list, so its id is not reused while it is here
    return shape


_SHAPES: dict = {}
_BY_LIST: dict = {}
_MISSING = object()


class _Default:
    """Stands for a default value we do not carry; shows as `=...` in messages."""

    def __repr__(self) -> str:
        return "..."
