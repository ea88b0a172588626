# `make demo`: create .venv, install, train + evaluate on the built-in demo data.
# `make test`: create .venv, install, run the test suite (two pytest-xdist workers, one torch thread each) but the
# tests marked `slow`; `make test-full`: all of them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TEST_WORKERS ?= 2

.PHONY: install transformers-tests test test-full lint demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# transformers' common model / config tests, from the installed release's source distribution on the package index
# (not copied into the repository; offline, tests/test_transformers_common.py skips, naming what is missing)
transformers-tests: install
	$(PY) tests/scripts/fetch_transformers_tests.py $(VENV)/transformers-tests

test: install transformers-tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# the layers of the package (import-linter contracts in setup.cfg); the test suite checks them too
lint: install
	$(VENV)/bin/lint-imports

# + the tests marked `slow`, deselected by `make test` (setup.cfg's addopts): inductor's kernels for a training step,
# ~1 min of C++ compilation
test-full: install transformers-tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m ""

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no scripts/train.py --config configs/demo.yaml --overwrite_output_dir true

bench: install
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info
