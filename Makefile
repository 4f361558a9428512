# User-facing entry points: `make demo`, `make test` and `make lint`. Each creates .venv/ when
# missing and installs onnxprune there in editable mode. torch is installed alone first, pinned,
# so that pip never resolves a newer CUDA build on a CPU machine (set TORCH_SPEC/TORCH_PIP_ARGS
# to override).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[cpu,demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(PIP) install -q -e '.[cpu,dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(PY) examples/digits/demo.py

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The same paths and settings (pyproject.toml [tool.ruff], [tool.mypy]) a contributor checks locally.
LINT_PATHS := onnxprune tests benchmarks examples

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy onnxprune

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
