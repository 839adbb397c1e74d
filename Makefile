# Two commands for a new machine: `make demo` (set up + run the CPU demo benchmark) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
MODEL := code/local_model/SmolLM2-135M-Instruct/config.json

.PHONY: setup demo test clean-demo

setup: $(VENV)/.installed $(MODEL)

$(VENV)/.installed: requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	touch $@

$(MODEL): $(VENV)/.installed
	cd code && $(PY) scripts/install_default_model.py

demo: setup
	cd code && PYTHON=$(PY) bash scripts/demo.sh

test: setup
	cd code && $(PY) -m pytest -q

clean-demo:
	rm -rf code/data/demo/model_answer
