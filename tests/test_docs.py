"""Code in the docs is code CI runs: every ```python block of README.md and docs/*.md is executed,
except an excerpt (first line ``# excerpt: <file>``), whose lines must each appear, in order, in
that file (so the docs quote the examples that tests/test_examples.py runs); every ```yaml block is
a study file (loaded as ``ncstudy run`` loads one) or a part of one (its top-level keys validated
by the study model's fields)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)


def blocks():
    for doc in DOCS:
        for i, m in enumerate(BLOCK.finditer(doc.read_text())):
            yield pytest.param(doc, m.group(1), id=f"{doc.name}-{i}")


@pytest.mark.parametrize("doc,code", list(blocks()))
def test_python_block(doc, code, tmp_path, monkeypatch):
    first = code.splitlines()[0]
    if first.startswith("# excerpt:"):
        source = (ROOT / first.split(":", 1)[1].strip()).read_text().splitlines()
        at = 0
        for line in code.splitlines()[1:]:
            if not line.strip():
                continue
            hits = [j for j in range(at, len(source)) if source[j].rstrip() == line.rstrip()]
            assert hits, f"{doc.name}: excerpt line not in {first}: {line!r}"
            at = hits[0] + 1
        return
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc.name} block", "exec"), {"__name__": "__doc_block__"})


def test_every_doc_has_been_looked_at():
    assert any(True for _ in blocks()), "no python blocks found: the pattern is wrong"


def yaml_blocks():
    for doc in DOCS:
        for i, m in enumerate(YAML_BLOCK.finditer(doc.read_text())):
            yield pytest.param(doc, m.group(1), id=f"{doc.name}-yaml-{i}")


@pytest.mark.parametrize("doc,text", list(yaml_blocks()))
def test_yaml_block(doc, text, tmp_path):
    import yaml

    from ncstudy.study.spec import StudySpec, load_study

    data = yaml.safe_load(text)
    assert isinstance(data, dict) and data, f"{doc.name}: an empty yaml block"
    if "name" in data and "base" in data:  # a whole study file
        path = tmp_path / "study.yaml"
        path.write_text(text)
        load_study(path)
        return
    for key, value in data.items():  # a part: each top-level key is a study field, validated alone
        assert key in StudySpec.model_fields, f"{doc.name}: '{key}' is not a study-file key"
        StudySpec.__pydantic_validator__.validate_assignment(StudySpec.model_construct(), key, value)
