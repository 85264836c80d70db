# Two entry points (see README): `make reproduce` and `make test`. Both build .venv themselves,
# installing torch==2.13.0 first (a plain `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test reproduce benchmark clean

setup: $(STAMP)

# the editable install records which folders are packages: re-install when the package root changes
$(STAMP): pyproject.toml analysis_lib/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[notebooks,dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

reproduce: setup
	$(BIN)/python -m analysis_lib reproduce

benchmark: setup
	$(BIN)/python -m analysis_lib.benchmarks.prefill
	$(BIN)/python -m analysis_lib.benchmarks.batching

clean:
	rm -rf $(VENV) runs

# Retrain the shipped embedded model (data/embedded-model/MODEL_CARD.md: recipe and step) from scratch
# into runs/train-$(RECIPE), resuming from its checkpoint when one exists; runs/train-$(RECIPE)/model is
# the result. HOURS=2 stops (after checkpointing) after two hours; run it again to carry on.
RECIPE ?= pointer-main-loc
UNTIL_STEP ?= 13000
.PHONY: train-default
train-default: setup
	nice -n 19 $(BIN)/python -m analysis_lib.training train --recipe $(RECIPE) --out runs/train-$(RECIPE) --until-step $(UNTIL_STEP) $(if $(HOURS),--hours $(HOURS))
