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
	$(PY) -m orchestrator sweep search_spaces/quickstart.yaml

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The UI test drives Debian's chromium headless; install it when missing.
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null)

test: $(VENV)/.installed chromium
	$(PY) -m pytest -q

# The edit loop: the suite without the tests marked slow (Ray sweeps, full training runs)
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# On a CUDA machine: bench, shared-GPU sweep, NCCL DDP, OOM trial; one JSON under results/gpu-check/
gpu-check: $(VENV)/.installed
	$(PY) scripts/gpu_check.py

# The docs site (mkdocs.yml) into results/site; --strict: a broken link, anchor or snippet, or a page
# left out of the nav, fails it (not with -q: mkdocs 1.6 then drops the warnings strict counts)
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d results/site

# Format, lint and the import contracts (pyproject.toml: [tool.ruff], [tool.importlinter])
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

.PHONY: install quickstart test test-fast lint docs chromium gpu-check
