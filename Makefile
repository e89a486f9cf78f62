# dgstudy — see README.md. Every target depends on `env`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= paper
BACKBONE ?=
# Extra papermill arguments, e.g. PAPERMILL_ARGS="-p device cuda"
PAPERMILL_ARGS ?=

# torch/torchvision are installed first, pinned to the pair the study is tested with (override for
# another build, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your CUDA index>").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

STAMP := $(VENV)/.dgstudy-installed

.PHONY: help env test smoke reproduce clean distclean bench
help:
	@echo "make env        build .venv (idempotent)"
	@echo "make test       run the test suite (includes the smoke chain of notebooks)"
	@echo "make smoke      the whole notebook chain at toy scale (CPU, offline, < 5 min)"
	@echo "make reproduce  the whole study (PROFILE=paper|osie|smoke, BACKBONE=...)"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make clean      remove results and figures; distclean also removes .venv and data caches"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(strip $(TORCH_SPEC))" ]; then echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q $(TORCH_SPEC); fi
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: env
	$(PY) -m pytest -q -ra

smoke: env
	$(MAKE) --no-print-directory reproduce PROFILE=smoke

bench: env
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf results/*/ figures/*.png figures/*.pdf

distclean: clean
	rm -rf $(VENV) data/cache data/features
