"""Public names that changed keep working for a release, with a warning that names the new one
(issue 26, item 7)."""
from __future__ import annotations

import importlib
import sys

import pytest

import ncstudy.analyze
import ncstudy.analyze.experiments
import ncstudy.analyze.pipeline
import ncstudy.analyze.presets


def _forget_old_package() -> None:
    """Import ``ncstudy.analysis`` afresh (a module warns once, when it is first imported)."""
    for name in [m for m in sys.modules if m == "ncstudy.analysis" or m.startswith("ncstudy.analysis.")]:
        del sys.modules[name]


@pytest.mark.parametrize("old, new", [
    ("ncstudy.analysis.engine", "ncstudy.analyze.experiments"),
    ("ncstudy.analysis.core", "ncstudy.analyze.pipeline"),
    ("ncstudy.analysis.presets", "ncstudy.analyze.presets"),
    ("ncstudy.analysis.sources", "ncstudy.analyze.sources"),
    ("ncstudy.analysis.report", "ncstudy.analyze.report"),
    ("ncstudy.analysis.figures", "ncstudy.analyze.figures"),
])
def test_old_analysis_modules_are_the_new_ones_with_a_warning(old, new):
    _forget_old_package()
    with pytest.warns(DeprecationWarning) as record:
        module = importlib.import_module(old)
    messages = [str(w.message) for w in record]
    assert f"module {old} is deprecated and will be removed in a future release; use {new}" in messages
    assert "module ncstudy.analysis is deprecated and will be removed in a future release; use ncstudy.analyze" \
        in messages
    assert module is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]


def test_old_import_statements_give_the_same_objects():
    _forget_old_package()
    with pytest.warns(DeprecationWarning) as record:
        from ncstudy.analysis.engine import AnalysisOptions, ExperimentSpec
        from ncstudy.analysis.presets import Preset, get_preset
    assert sorted(str(w.message).rsplit("use ", 1)[1] for w in record) == [
        "ncstudy.analyze", "ncstudy.analyze.experiments", "ncstudy.analyze.presets"]
    from ncstudy.analysis import analyze  # the package: already imported above, no second warning

    assert AnalysisOptions is ncstudy.analyze.experiments.AnalysisOptions
    assert ExperimentSpec is ncstudy.analyze.ExperimentSpec
    assert analyze is ncstudy.analyze.pipeline.analyze
    # a preset written against the old path is still a Preset of the new one
    assert isinstance(get_preset("rupa2026"), Preset) and Preset is ncstudy.analyze.presets.Preset


def test_the_warning_points_at_the_import_statement():
    _forget_old_package()
    source = "\n\nimport ncstudy.analysis.core\n"
    with pytest.warns(DeprecationWarning) as record:
        exec(compile(source, "old_script.py", "exec"), {})
    # both warnings (package, module) name the script's import line, not ncstudy's alias files
    assert [(w.filename, w.lineno) for w in record] == [("old_script.py", 3), ("old_script.py", 3)]
