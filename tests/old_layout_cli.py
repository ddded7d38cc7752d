"""tests/held_cli.py as an older ncstudy with another module layout would run it: every class and
function of ncstudy's driver-side modules is moved, for pickling, to a module ``ncstudy_v0.<name>``
that only this process has. Whatever the launch leaves in Tune's saved state that names ncstudy's
code by module path names a module the next ncstudy does not have -- as after a refactor between
a crash and the resume. (Kept where they are: the trainable and what trial workers import, the
picture process's functions, and :mod:`ncstudy.study.tune_state`, the one path Tune's state may name.)
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from pathlib import Path

OLD = "ncstudy_v0"
KEEP = ("ncstudy.study.trainable", "ncstudy.study.tune_state", "ncstudy.train", "ncstudy.data", "ncstudy.models",
        "ncstudy.metrics", "ncstudy.adapters.mlflow.pictures", "ncstudy.cli")


def move_modules() -> int:
    """Give ncstudy's driver-side classes and functions module paths under ``ncstudy_v0``."""
    import ncstudy

    moved = 0
    sys.modules.setdefault(OLD, types.ModuleType(OLD))
    for info in pkgutil.walk_packages(ncstudy.__path__, "ncstudy."):
        name = info.name
        if name.startswith(KEEP) or name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        alias = OLD + name[len("ncstudy"):]
        parts = alias.split(".")
        for i in range(2, len(parts)):  # the packages above it
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[alias] = mod
        for obj in list(vars(mod).values()):
            if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == name:
                try:
                    obj.__module__ = alias
                    moved += 1
                except (AttributeError, TypeError):
                    pass
    return moved


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    assert move_modules() > 50
    import held_cli
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(held_cli)  # trial workers cannot import it
    sys.exit(held_cli.main(sys.argv[1:]))
