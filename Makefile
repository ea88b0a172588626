# `make demo`: create .venv, install the runtime dependencies (setup.cfg's `train` extra), train + evaluate on the
# built-in demo data.
# `make test`: create .venv, install the development dependencies (the `dev` extra), run the test suite (two
# pytest-xdist workers, one torch thread each) but the tests marked `slow`; `make test-full`: all of them.
# Both use the same .venv, with one stamp file per extra: `make demo` then `make test` (or the reverse) each install
# what they need, and a change to setup.cfg or pyproject.toml installs again.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TEST_WORKERS ?= 2

.PHONY: install install-train install-dev transformers-tests test test-full lint demo bench clean

# the virtual environment itself, with a current pip (created once; `make clean` removes it)
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first (TORCH_SPEC: the build you want), then the package with one extra of setup.cfg
$(VENV)/.installed-train: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[train]"
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install-train: $(VENV)/.installed-train
install-dev: $(VENV)/.installed-dev
install: install-dev

# transformers' common model / config tests, from the installed release's source distribution on the package index
# (not copied into the repository; offline, tests/test_transformers_common.py skips, naming what is missing)
transformers-tests: install-dev
	$(PY) tests/scripts/fetch_transformers_tests.py $(VENV)/transformers-tests

test: install-dev transformers-tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# the layers of the package (import-linter contracts in setup.cfg); the test suite checks them too
lint: install-dev
	$(VENV)/bin/lint-imports

# + the tests marked `slow`, deselected by `make test` (setup.cfg's addopts): inductor's kernels for a training step,
# ~1 min of C++ compilation
test-full: install-dev transformers-tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m ""

demo: install-train
	HF_HUB_OFFLINE=1 $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no scripts/train.py --config configs/demo.yaml --overwrite_output_dir true

bench: install-train
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info
