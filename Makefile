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
	$(PY) -m orchestrator train search_spaces/quickstart_teacher.yaml
	$(PY) -m orchestrator train search_spaces/quickstart_student.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install quickstart test
