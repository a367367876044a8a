# radius-proxy: `make demo` runs the embedded demo, `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test unit lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e . --group dev
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/radius-proxy demo

test: $(VENV)/.installed lint
	scripts/install-test-servers
	$(PY) -m pytest

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

lint: $(VENV)/.installed
	$(PY) -m ruff check radius_proxy tests bench
	$(PY) -m mypy

bench: $(VENV)/.installed
	scripts/install-test-servers
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
