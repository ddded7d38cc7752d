"""Public names that changed keep working for a release, with a :class:`DeprecationWarning` that
names the new one (issue 26, item 7).

* :func:`alias_module` -- an old module path (a file that calls it) becomes the new module itself,
  so ``from old.path import X`` returns the very objects of the new module;
* :func:`warn_renamed` -- the one message format every alias uses.
"""
from __future__ import annotations

import importlib
import sys
import warnings


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
