"""Adapters of :mod:`ncstudy.forecast` to Ray Tune (:class:`FnStarScheduler`) and Optuna
(:class:`FnStarPruner`). Import the submodules directly; this package imports neither Ray nor
Optuna by itself."""

__all__ = ["ray_scheduler", "optuna_pruner"]
