"""``ncstudy analyze``: the paper's statistics, figures and report from logs or an MLflow study.

Entry points: :func:`analyze` (returns an :class:`Analysis`) and the command line
(:mod:`ncstudy.cli.analyze`). See ``docs/analysis.md``. Modules, by job:

* :mod:`~ncstudy.analyze.sources` -- where runs (:class:`ncstudy.runs.Run`) come from (a log folder, an MLflow study);
* :mod:`~ncstudy.analyze.presets` -- the file map of a known log folder (``rupa2026`` ships here);
* :mod:`~ncstudy.analyze.experiments` -- the statistics: onsets per run, groups, tests, effects, lead times;
* :mod:`~ncstudy.analyze.pipeline` -- source -> run table -> experiments (:func:`analyze`);
* :mod:`~ncstudy.analyze.figures`, :mod:`~ncstudy.analyze.report` -- pictures, Markdown, CSV and JSON.

The package was ``ncstudy.analysis``; that name still imports, with a deprecation warning.
"""
from ncstudy.analyze.experiments import AnalysisOptions, ExperimentSpec
from ncstudy.analyze.pipeline import Analysis, analyze, analyze_runs
from ncstudy.analyze.sources import RunInput  # deprecated name of ncstudy.runs.Run (constructing it warns)
from ncstudy.runs import Run

__all__ = ["Analysis", "AnalysisOptions", "ExperimentSpec", "Run", "RunInput", "analyze", "analyze_runs"]
