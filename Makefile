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

# The main job: train the `tiny` preset with masked-LM on the standard library's
# docstrings (present on every machine). A second `make run` resumes the same run.
RUN_DIR ?= runs/default
run: $(STAMP)
	$(VENV)/bin/headwise train --objective mlm --preset tiny --out $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/run.json),--resume)

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
