PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test test-all lint bench clean

$(STAMP): pyproject.toml constraints/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints/dev.txt -e ".[dev]"
	touch $(STAMP)

# The main job: train the `tiny` preset (rotary positions) as a GPT-like decoder (next
# token) on the standard library's source (present on every machine), look inside its heads
# (RUN_DIR/report.html) and print what it learned (docs/training.md). A second
# `make run` resumes the same run, or re-prints the summary of a finished one.
# CONLLU=path/to/treebank.conllu adds the syntax probe.
RUN_DIR ?= runs/default
CONLLU ?=
run: $(STAMP)
	$(VENV)/bin/headwise train --objective clm --preset tiny --model positions=rope --tokenizer-kind char \
		--steps 600 --eval-every 100 --out $(RUN_DIR) \
		$(if $(CONLLU),--conllu $(CONLLU)) $(if $(wildcard $(RUN_DIR)/run.json),--resume)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(VENV)/bin/headwise bench attention

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) build src/*.egg-info
