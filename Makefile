# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv when missing, installs llmrl into it and fetches the default model.

VENV ?= .venv
PY := $(VENV)/bin/python
LLMRL := $(VENV)/bin/llmrl
STAMP := $(VENV)/.installed-stamp
# torch is pinned to the CPU build that lies on disk; a bare `torch` pulls a multi-GB CUDA build
TORCH := torch==2.13.0

.PHONY: install model chromium test test-all demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,atari]"
	touch $(STAMP)

install: $(STAMP)

model: install
	$(LLMRL) model fetch

# the report test renders report.html in headless Chromium (Debian's package; installed only when root)
chromium:
	@command -v chromium >/dev/null || if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else echo "note: chromium is missing and cannot be installed without root (apt-get install chromium);" \
		"the report's rendering test is skipped (and fails when CI=true)"; fi

test: model chromium
	$(VENV)/bin/pytest -q -ra

test-all: model chromium
	LLMRL_SLOW=1 $(VENV)/bin/pytest -q -ra

# the main job: the CartPole ablation of every strategy (3 seeds, about 9 minutes on 2 cores);
# rerunning resumes, skipping finished runs
demo: model
	$(LLMRL) ablate configs/experiments/cartpole-demo.yaml
	$(LLMRL) report results/cartpole-demo

bench: model
	$(LLMRL) bench throughput --env CartPole-v1

clean:
	rm -rf $(VENV) build *.egg-info
