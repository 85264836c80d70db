# Two entry points (see README): `make reproduce` and `make test`. Both build .venv themselves from the
# lock (.ci/lock.txt: every package at the exact version the tests passed with), installing
# torch==2.13.0 first (a plain `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := .ci/lock.txt
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test reproduce rehearsal benchmark clean lock test-compat check-lmms

setup: $(STAMP)

# re-install when the lock or the dependencies change, and when the package root changes (the editable
# install records which folders are packages); then check the environment holds every locked version
$(STAMP): pyproject.toml analysis_lib/__init__.py $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) pip setuptools
	$(PIP) torch==2.13.0
	$(PIP) --no-build-isolation -e ".[notebooks,dev]"
	$(BIN)/python analysis_lib/dependencies.py verify
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# JOBS notebooks at once (one per core on this 2-core reference machine; one thread each)
JOBS ?= 2
reproduce: setup
	$(BIN)/python -m analysis_lib reproduce --jobs $(JOBS)

# The rehearsal (README): a random-weight stand-in with LLaVA-1.5-7B's geometry and tiny copies of every benchmark
# in its lmms-lab layout, built offline into runs/rehearsal, then every notebook on the rehearsal profile (the
# llava-1.5-7b profile on CPU): figures and tables under runs/rehearsal/out, executed notebooks in
# runs/notebooks/rehearsal.
rehearsal: setup
	$(BIN)/python -m analysis_lib rehearsal build --out runs/rehearsal
	$(BIN)/python -m analysis_lib reproduce --profile rehearsal --root runs/rehearsal/out --jobs $(JOBS)

benchmark: setup
	$(BIN)/python -m analysis_lib.benchmarks.prefill
	$(BIN)/python -m analysis_lib.benchmarks.batching
	$(BIN)/python -m analysis_lib.benchmarks.evaluation
	$(BIN)/python -m analysis_lib.benchmarks.processes

clean:
	rm -rf $(VENV) runs

# Refresh the lock: the newest releases pyproject.toml's ranges allow, in a throw-away environment
# (runs/envs/lock); the lock is written only if the whole test suite passes there, otherwise the
# changed versions and the failing tests are listed. Run it when a dependency releases, then commit.
# Both this and test-compat run as a script (standard library only), independent of .venv and the lock.
lock:
	$(PYTHON) analysis_lib/dependencies.py lock

# Both ends of the supported range (every direct dependency at its lower bound; the newest releases
# in range), each in a throw-away environment, running the engine, capture and generation invariants.
# FULL=1 runs the whole suite in both.
test-compat:
	$(PYTHON) analysis_lib/dependencies.py compat $(if $(FULL),--full)

# --scoring lmms-eval against lmms-eval 0.7.3 itself (tests/test_lmms_eval.py), in a throw-away venv that
# sees the project's packages through a .pth file. lmms-eval is installed without its ~60 requirements
# (a CUDA torch build, torchvision, wandb, openai, ...): its task functions import only these few.
LMMS_VENV := runs/lmms-venv
check-lmms: setup
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	    "$$($(LMMS_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/project.pth"
	$(LMMS_VENV)/bin/python -m pip install --quiet --no-deps lmms-eval==0.7.3
	$(LMMS_VENV)/bin/python -m pip install --quiet loguru pytz datasets accelerate evaluate sacrebleu
	$(LMMS_VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/test_lmms_eval.py

# Retrain the shipped embedded model (data/embedded-model/MODEL_CARD.md: recipe and step) from scratch
# into runs/train-$(RECIPE), resuming from its checkpoint when one exists; runs/train-$(RECIPE)/model is
# the result. HOURS=2 stops (after checkpointing) after two hours; run it again to carry on.
RECIPE ?= pointer-main-loc
UNTIL_STEP ?= 13000
.PHONY: train-default
train-default: setup
	nice -n 19 $(BIN)/python -m analysis_lib.training train --recipe $(RECIPE) --out runs/train-$(RECIPE) --until-step $(UNTIL_STEP) $(if $(HOURS),--hours $(HOURS))
