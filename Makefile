# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv when missing, installs llmrl into it and fetches the default model.

VENV ?= .venv
PY := $(VENV)/bin/python
LLMRL := $(VENV)/bin/llmrl
STAMP := $(VENV)/.installed-stamp
# torch is pinned to the CPU build that lies on disk; a bare `torch` pulls a multi-GB CUDA build
TORCH := torch==2.13.0

.PHONY: install model test test-all demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

model: install
	$(LLMRL) model fetch

test: model
	$(VENV)/bin/pytest -q -ra

test-all: model
	LLMRL_SLOW=1 $(VENV)/bin/pytest -q -ra

demo: model
	$(PY) scripts/demo.py

bench: model
	$(LLMRL) bench throughput --env CartPole-v1

clean:
	rm -rf $(VENV) build *.egg-info
