"""Deprecated: the ``ncstudy analyze`` engine is :mod:`ncstudy.analyze` (renamed so that the
repository's top-level ``analysis/`` folder means only the project's research).

``import ncstudy.analysis`` and the old submodules (``engine`` -> :mod:`ncstudy.analyze.experiments`,
``core`` -> :mod:`ncstudy.analyze.pipeline`, ``presets``, ``sources``, ``figures``, ``report``) still
work for a release, each with a :class:`DeprecationWarning` that names its new module.
"""
from ncstudy.analyze import Analysis, AnalysisOptions, ExperimentSpec, RunInput, analyze, analyze_runs
from ncstudy.deprecation import warn_renamed

warn_renamed("module ncstudy.analysis", "ncstudy.analyze")

__all__ = ["Analysis", "AnalysisOptions", "ExperimentSpec", "RunInput", "analyze", "analyze_runs"]
