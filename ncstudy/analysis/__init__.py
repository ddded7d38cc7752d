"""``ncstudy analyze``: the paper's statistics, figures and report from logs or an MLflow study.

Entry points: :func:`analyze` (returns an :class:`Analysis`) and the command line
(:mod:`ncstudy.cli.analyze`). See ``docs/analysis.md``.
"""
from ncstudy.analysis.core import Analysis, analyze, analyze_runs
from ncstudy.analysis.engine import AnalysisOptions, ExperimentSpec
from ncstudy.analysis.sources import RunInput

__all__ = ["Analysis", "AnalysisOptions", "ExperimentSpec", "RunInput", "analyze", "analyze_runs"]
