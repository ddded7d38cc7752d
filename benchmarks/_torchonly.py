"""Run ncstudy's real Trainer, models and metrics where only torch and numpy are installed.

Of the modules the Trainer imports, only ``ncstudy.config`` needs more than torch and numpy
(pydantic, PyYAML), and the Trainer itself only reads attributes of its config. On a bare GPU box
:func:`install_config_shim` puts a stand-in ``ncstudy.config`` in ``sys.modules`` (``ConfigError``
plus placeholder names for annotations), and :func:`train_config` builds the same nested config
as attribute namespaces with ``TrainConfig``'s defaults. Where pydantic is present the real
``TrainConfig`` validates the same dict, and :func:`check_namespace_matches` (run by the CPU smoke
test) makes sure the two agree field by field, so the defaults below cannot drift unnoticed.
"""
from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

# Mirrors ncstudy/config.py's defaults (checked against it by check_namespace_matches).
DEFAULTS: dict[str, Any] = {
    "seed": 0, "device": "auto", "threads": None, "ce_epochs": 200, "mse_epochs": 400, "batch_size": 128,
    "intervention_alpha": None,
    "data": {"name": "mnist5k", "root": None, "download": False, "n_train": None, "n_test": None, "seed": 0,
             "num_classes": 10, "dim": 32, "separation": 4.0, "shape": None},
    "model": {"name": "mlp", "depth": 5, "width": 512, "activation": "relu"},
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True,
                  "schedule": "cosine", "milestones_ce": [], "milestones_mse": [], "gamma": 0.1},
    "eval": {"nc_every": 10, "terminal_acc": 0.99, "strict_threshold": 0.01, "relaxed_threshold": 0.05,
             "onset_phase2_only": True, "stop_at_onset": False, "batch_size": 4096},
}

BLOCKED = ("pydantic", "yaml", "ray", "mlflow", "pandas", "scipy", "matplotlib", "optuna", "mlxtend",
           "threadpoolctl")


def have_real_config() -> bool:
    try:
        import ncstudy.config  # noqa: F401
    except ImportError:
        return False
    return not getattr(sys.modules["ncstudy.config"], "IS_SHIM", False)


def install_config_shim() -> bool:
    """Stand-in ``ncstudy.config`` when the real one cannot be imported; True when installed."""
    if have_real_config():
        return False
    shim = types.ModuleType("ncstudy.config")
    shim.__doc__ = "stand-in for ncstudy.config on a torch-only machine (benchmarks/_torchonly.py)"

    class ConfigError(ValueError):
        pass

    shim.ConfigError = ConfigError  # type: ignore[attr-defined]
    for name in ("DataConfig", "ModelConfig", "OptimizerConfig", "TrainConfig", "EvalConfig"):
        setattr(shim, name, type(name, (types.SimpleNamespace,), {}))
    shim.IS_SHIM = True  # type: ignore[attr-defined]
    import ncstudy

    sys.modules["ncstudy.config"] = shim
    ncstudy.config = shim  # type: ignore[attr-defined]
    return True


class _Cfg(types.SimpleNamespace):
    @property
    def total_epochs(self) -> int:
        return self.ce_epochs + self.mse_epochs


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in out:
            raise KeyError(f"unknown config key {k!r}")
        out[k] = _merge(out[k], v) if isinstance(out[k], dict) and isinstance(v, dict) else v
    return out


def namespace_config(d: dict[str, Any]) -> Any:
    full = _merge(DEFAULTS, d)
    ns = {k: types.SimpleNamespace(**v) if isinstance(v, dict) else v for k, v in full.items()}
    return _Cfg(**ns)


def train_config(d: dict[str, Any]) -> Any:
    """The real ``TrainConfig`` when pydantic is there, else the namespace stand-in."""
    if have_real_config():
        from ncstudy.config import TrainConfig

        return TrainConfig.model_validate(d)
    return namespace_config(d)


def check_namespace_matches(d: dict[str, Any]) -> None:
    """Raise if the namespace stand-in differs from the real TrainConfig for ``d``."""
    from ncstudy.config import TrainConfig

    real = TrainConfig.model_validate(d).model_dump()
    ns = namespace_config(d)
    mine = {k: (vars(v) if isinstance(v, types.SimpleNamespace) else v) for k, v in vars(ns).items()}
    if real != mine:
        diff = {k: (real.get(k), mine.get(k)) for k in set(real) | set(mine) if real.get(k) != mine.get(k)}
        raise AssertionError(f"benchmarks/_torchonly.py DEFAULTS drifted from ncstudy/config.py: {diff}")
    if ns.total_epochs != TrainConfig.model_validate(d).total_epochs:
        raise AssertionError("total_epochs differs")


class _Refuse(importlib.abc.Loader):
    def create_module(self, spec: Any) -> None:
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked: torch-only simulation)",
                                  name=spec.name)

    def exec_module(self, module: Any) -> None:  # never reached
        raise ModuleNotFoundError(module.__name__)


class BlockImports:
    """Meta-path finder that makes the given top-level packages unimportable (simulates a
    torch-only machine in the CPU smoke test). ``import x`` raises ModuleNotFoundError; a probe
    by ``importlib.util.find_spec`` sees a spec without origin (torch's dynamo probes optional
    packages that way and skips those)."""

    def __init__(self, names: tuple[str, ...] = BLOCKED) -> None:
        self.names = set(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, _Refuse(), origin=None)
        return None

    def install(self) -> None:
        for mod in list(sys.modules):
            if mod.split(".")[0] in self.names or mod == "ncstudy.config":
                del sys.modules[mod]
        sys.meta_path.insert(0, self)
