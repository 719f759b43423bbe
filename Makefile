# The two commands a newcomer needs (README): `make demo` and `make test`. Both install what is missing.
PY := .venv/bin/python
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test test-fast clean-demo

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -x tests -m "not slow"

clean-demo:
	rm -rf runs/demo data/demo
