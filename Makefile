# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,export]'
	touch $@

install: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(PY) -m orchestrator quickstart

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install quickstart test
