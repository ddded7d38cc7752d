"""Public names that changed keep working for a release, with a :class:`DeprecationWarning` that
names the new one (issue 26, item 7).

* :func:`alias_module` -- an old module path (a file that calls it) becomes the new module itself,
  so ``from old.path import X`` returns the very objects of the new module;
* :func:`moved_names` -- a module whose names moved elsewhere: its ``__getattr__`` finds each one
  where it lives now;
* :func:`renamed_function` -- an old function: calling it warns, naming the new one, and runs it;
* :func:`renamed_class` -- an old class name: a subclass of the new class whose construction warns;
* :class:`RenamedKeys` -- a result dict whose renamed keys still read (``d["fn"]``), with a warning;
* :func:`warn_renamed` -- the one message format every alias uses.
"""
from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any, Callable, ClassVar, Mapping, TypeVar

T = TypeVar("T")


def warn_renamed(old: str, new: str, stacklevel: int = 2) -> None:
    """Warn that ``old`` is deprecated and ``new`` replaces it (``stacklevel`` as in :func:`warnings.warn`,
    counted from the caller of this function)."""
    warnings.warn(f"{old} is deprecated and will be removed in a future release; use {new}", DeprecationWarning,
                  stacklevel=stacklevel + 1)


def alias_module(old: str, new: str) -> None:
    """Make module ``old`` (being imported: call this from its body) the module ``new``.

    The warning points at the statement that imports ``old`` (the import machinery's own frames are
    skipped by :mod:`warnings`); afterwards ``sys.modules[old] is sys.modules[new]``, so the import
    returns the new module and every name of it, private ones included.
    """
    module = importlib.import_module(new)
    # frames: warn_renamed <- alias_module <- the alias module's body <- (importlib) <- the importer
    warn_renamed(f"module {old}", f"{new}", stacklevel=3)
    sys.modules[old] = module


def moved_names(old_module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) of ``old_module``, whose names moved: ``moved`` maps each
    name to the module it lives in now. ``from old_module import X`` (and a pickle naming
    ``old_module.X``) returns that object, with a warning naming its new place."""

    def __getattr__(name: str) -> Any:
        new = moved.get(name)
        if new is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warn_renamed(f"{old_module}.{name}", f"{new}.{name}", stacklevel=2)  # frames: __getattr__ <- the importer
        return getattr(importlib.import_module(new), name)

    return __getattr__


def renamed_function(old: str, new: str, fn: Callable[..., T]) -> Callable[..., T]:
    """The function ``old`` (a dotted name) that ``new`` replaces: calling it warns, naming ``new``,
    and returns ``fn(*args, **kwargs)`` (``fn``: ``new``, or ``new`` with the old defaults bound)."""

    def deprecated(*args: Any, **kwargs: Any) -> T:
        warn_renamed(old, new, stacklevel=2)  # frames: deprecated <- the caller
        return fn(*args, **kwargs)

    deprecated.__name__ = deprecated.__qualname__ = old.rsplit(".", 1)[-1]
    deprecated.__doc__ = f"Deprecated: use {new} (calling this warns)."
    return deprecated


def renamed_class(new: type[T], old: str) -> type[T]:
    """The class ``old`` that ``new`` replaces: a subclass of ``new`` (so its instances are ``new``'s,
    pickles of it load) whose construction warns, naming ``new``. Bind it in ``new``'s module under
    ``old``: ``OldName = renamed_class(NewName, "OldName")``."""
    target = f"{new.__module__}.{new.__qualname__}"

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        warn_renamed(old, target, stacklevel=2)  # frames: __init__ <- the caller constructing it
        new.__init__(self, *args, **kwargs)

    def body(ns: dict[str, Any]) -> None:
        ns.update(__init__=__init__, __module__=new.__module__,
                  __doc__=f"Deprecated name of :class:`{target}` (constructing it warns); use that class.")

    return types.new_class(old, (new,), exec_body=body)


class RenamedKeys(dict):
    """A dict whose renamed keys (``renamed``: old key -> new key, set by a subclass) still read:
    ``d[old]`` and ``d.get(old)`` return ``d[new]`` with a :class:`DeprecationWarning` naming the new
    key. The old keys are not stored: iteration, ``in``, ``len`` and ``json.dumps`` see the new keys
    only, and ``{**d}`` is the plain record."""

    renamed: ClassVar[Mapping[str, str]] = {}

    def _new_key(self, key: Any) -> str | None:
        new = self.renamed.get(key) if isinstance(key, str) else None
        return new if new is not None and dict.__contains__(self, new) else None

    def __missing__(self, key: Any) -> Any:
        new = self._new_key(key)
        if new is None:
            raise KeyError(key)
        warn_renamed(f"key {key!r}", repr(new), stacklevel=2)  # frames: __missing__ <- the caller
        return dict.__getitem__(self, new)

    def get(self, key: Any, default: Any = None) -> Any:
        new = None if dict.__contains__(self, key) else self._new_key(key)
        if new is None:
            return dict.get(self, key, default)
        warn_renamed(f"key {key!r}", repr(new), stacklevel=2)
        return dict.__getitem__(self, new)
