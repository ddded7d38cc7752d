# `make demo` and `make test` do all set-up themselves: .venv is (re)built only when
# missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test lint paper bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ncstudy run search_spaces/quickstart.yaml

# Two workers, a test file each (module fixtures stay in one process); no test assumes idle CPUs.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The paper reproduction (analysis/rupa2026/README.md): report and figures from the author's logs.
paper: $(STAMP)
	$(VENV)/bin/ncstudy analyze --logs ../shared/reference/rupa2026_logs --preset rupa2026 --out analysis/rupa2026/report

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
