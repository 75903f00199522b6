# The two commands of the README: `make demo` and `make test`. Both build .venv first when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv java clean gpu-check

$(STAMP): pyproject.toml setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[test,qwen]'
	@touch $(STAMP)

venv: $(STAMP) java

# METEOR (pycocoevalcap) runs a Java program: install a headless JRE when none is on the machine.
java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "java not found: installing a headless JRE for the METEOR scorer"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq default-jre-headless; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq default-jre-headless; fi; }

demo: venv
	$(VENV)/bin/odvla demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit and module tests only: no Ray cluster, no MLflow server, no Serve app (a few minutes on 2 cores).
test-fast: venv
	ODVLA_TEST_TIER=fast $(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

# On a lent CUDA machine, from a bare checkout: install, train 0.5b bf16 ZeRO-3 for a few steps on one GPU, serve its
# export, print one table (samples/s, tokens/s, MFU, /v1/plan p50/p99 at 1 and 8 clients). Fails at once without CUDA.
GPU_CHECK_ARGS ?=
gpu-check: venv
	$(PY) tests/gpu/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs mlruns demo_out .pytest_cache
