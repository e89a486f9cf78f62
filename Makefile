# dgstudy — see README.md. Every target depends on `env`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= paper
BACKBONE ?=
# Other profile keys to change, as YAML mapping entries, e.g. OVERRIDES="device: cuda, seed: 1"
OVERRIDES ?=
# Extra papermill arguments. The default shows every cell's output in the terminal as it runs
# (progress bars of extraction, training and evaluation refresh every TQDM_MININTERVAL seconds).
PAPERMILL_ARGS ?= --log-output --no-progress-bar
export TQDM_MININTERVAL ?= 10

# torch/torchvision are installed first, pinned to the pair the study is tested with (override for
# another build, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your CUDA index>").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

STAMP := $(VENV)/.dgstudy-installed

.PHONY: help env test smoke reproduce clean distclean bench lab
help:
	@echo "make env        build .venv (idempotent)"
	@echo "make test       run the test suite (includes the smoke chain of notebooks)"
	@echo "make smoke      the whole notebook chain at toy scale (CPU, offline, < 5 min)"
	@echo "make reproduce  the whole study (PROFILE=paper|osie|osie_extended|smoke, BACKBONE=..., OVERRIDES=...)"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make lab        JupyterLab on notebooks/ with this environment as the kernel (LAB_ARGS=...)"
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

# -- the notebook chain: `make reproduce` ---------------------------------------------------------
# results/<tag>/NN_x.ipynb is rebuilt only when its notebook, the profile yaml or a dgstudy source
# changed, or an earlier notebook was rebuilt (the library itself skips finished extraction and
# folds). papermill writes to <target>.running.ipynb, renamed into place only on success, so a
# failed or interrupted notebook never counts as up to date; the failed copy keeps the error. The
# finished copy is cleaned of what changes between identical runs (`dgstudy clean-notebook`), so the
# committed OSIE outputs change in git only where a result changed.
# <tag> is the library's (`dgstudy tag`: PROFILE, or PROFILE-BACKBONE for another backbone); the
# reproduce recipe asks for it and hands it to the sub-make that runs the notebooks.
# Damage: `dgstudy preflight` runs first and checks every feature store and finished fold the chain
# uses (dgstudy.repair); a damaged one is moved aside to *.damaged and the executed notebook that
# makes it gets a 1970 modification time, so this make reruns it and the notebooks after it, which
# rebuild exactly what was moved aside. With nothing damaged it touches nothing: a rerun does nothing.
PROFILE_YAML = dgstudy/profiles/$(PROFILE).yaml
OUT_TAG ?= $(PROFILE)
OUT_DIR = $(or $(DGSTUDY_RESULTS),results)/$(OUT_TAG)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
DGSTUDY_SOURCES := $(wildcard dgstudy/*.py dgstudy/*/*.py)
comma := ,
OVERRIDE_MAP = {$(OVERRIDES)$(if $(BACKBONE),$(if $(strip $(OVERRIDES)),$(comma) )backbone: $(BACKBONE))}
PAPERMILL_FLAGS = -p profile $(PROFILE) -y "overrides: $(OVERRIDE_MAP)" --cwd $(CURDIR) -k python3 $(PAPERMILL_ARGS)
PROFILE_ARGS = --profile $(PROFILE) $(if $(BACKBONE),--backbone $(BACKBONE))

reproduce: env
	@test -f $(PROFILE_YAML) || { echo "unknown PROFILE=$(PROFILE): no $(PROFILE_YAML)"; exit 2; }
	$(PY) -m dgstudy preflight --download $(PROFILE_ARGS)
	@tag=$$($(PY) -m dgstudy tag $(PROFILE_ARGS)); \
	  $(MAKE) --no-print-directory notebooks PROFILE=$(PROFILE) BACKBONE=$(BACKBONE) OUT_TAG=$$tag && \
	  echo "done: executed notebooks in $(or $(DGSTUDY_RESULTS),results)/$$tag/, figures in $(or $(DGSTUDY_FIGURES),figures)/$$tag/"

# one rule per notebook, each depending on the one before it
define NOTEBOOK_RULE
$(OUT_DIR)/$(notdir $(1)): $(1) $(PROFILE_YAML) $(DGSTUDY_SOURCES) $(2)
	@mkdir -p $$(@D)
	@rm -f $$@
	@echo "== $$< -> $$@"
	@$(PY) -m papermill $$< $$@.running.ipynb $(PAPERMILL_FLAGS) || { \
	  echo "FAILED: $$< (the executed copy with the error: $$@.running.ipynb)"; exit 1; }
	@$(PY) -m dgstudy clean-notebook $$@.running.ipynb
	@mv $$@.running.ipynb $$@
endef
$(foreach nb,$(NOTEBOOKS),$(eval $(call NOTEBOOK_RULE,$(nb),$(if $(prev),$(OUT_DIR)/$(notdir $(prev))))$(eval prev := $(nb))))

.PHONY: notebooks
notebooks: $(addprefix $(OUT_DIR)/,$(notdir $(NOTEBOOKS)))

# The notebooks' kernel "python3" is the interpreter of the Jupyter that runs them: here the .venv's.
LAB_ARGS ?=
lab: env
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

bench: env
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf results/*/ figures/*/

distclean: clean
	rm -rf $(VENV) data/cache data/features
