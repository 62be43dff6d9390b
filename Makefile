# minillm — every command a learner, a teacher or CI needs. Each target sets itself up.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/python -m pytest

.PHONY: help setup lab serve test test-unit test-soak test-kernels test-kernels-compile test-labs \
        test-notebooks test-fallback test-clients docs docs-serve notebooks grade bench clean

help:
	@echo "make lab        set up .venv and open the course in JupyterLab"
	@echo "make serve      set up .venv and start the OpenAI-compatible server on :8000"
	@echo "make test       set up .venv and run everything CI runs (CPU only)"
	@echo "make grade LAB=lab01 [TASK=1.2] [INTEGRATION=1]   grade your lab work"
	@echo "make docs       build the docs site into site/"

# CPU torch is pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,lab,docs]'
	touch $(STAMP)

setup: $(STAMP)

# Jupyter refuses to run as root unless told: CI and many containers are root.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

serve: $(STAMP)
	$(BIN)/minillm serve

test: $(STAMP) test-unit test-fallback test-kernels test-kernels-compile test-labs test-notebooks docs \
      test-clients
	@echo "make test: all suites passed"

test-unit: $(STAMP)
	$(PYTEST) tests -m "not kernels and not compile and not browser and not soak and not clients" -q

# Unmodified clients with heavy installs against the server: lm-eval (its `clients` extra adds
# about 620 MB: pandas, pyarrow, scipy, scikit-learn, nltk; 3 minutes to install) and guidellm.
CLIENTS := $(VENV)/.clients-installed
$(CLIENTS): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[clients]'
	touch $(CLIENTS)

test-clients: $(CLIENTS)
	$(PYTEST) tests -m clients -q

# 2,000 requests against the server, its memory growth printed (not in `make test`: minutes).
test-soak: $(STAMP)
	$(PYTEST) tests -m soak -q -rxX

# The engine tests again with oneDNN packing and the C attention kernel switched off: the paths a
# CPU without AVX-512 or without a C compiler takes, tested on every machine. Left out: tests that
# ask for attention_backend="cpu" by name (the kernel is off), and test_engine's scheduling
# settings other than the default (test-unit runs them all; this keeps the target near 2 minutes).
test-fallback: $(STAMP)
	MINILLM_DISABLE_PACKING=1 MINILLM_DISABLE_CPU_KERNEL=1 $(PYTEST) tests/test_engine.py \
	  tests/test_engine_api.py tests/test_engine_regressions.py \
	  -m "not kernels and not compile and not browser" \
	  -k "not cpu and (not test_mixed_batch or default)" -q

# The Triton interpreter runs the kernels on the CPU; it must be on before triton is imported.
test-kernels: $(STAMP)
	TRITON_INTERPRET=1 $(PYTEST) tests -m kernels -q

# Real compilation for H100/A100 with Triton's bundled ptxas: no GPU needed.
test-kernels-compile: $(STAMP)
	$(PYTEST) tests -m compile -q

test-labs: $(STAMP)
	$(PYTEST) labs --reference --integration -q -p no:cacheprovider
	$(BIN)/python tools/check_labs_fail.py

test-notebooks: $(STAMP)
	$(PYTEST) --nbval-lax chapters -q -p no:cacheprovider

notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace chapters/*.ipynb
	$(BIN)/python tools/clean_notebooks.py chapters/*.ipynb

# labs/grade.py refuses an unknown LAB or TASK with the list of choices.
grade: $(STAMP)
	$(BIN)/python labs/grade.py "$(LAB)" "$(TASK)" "$(INTEGRATION)"

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(PYTEST) tests -m browser -q

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/minillm bench throughput

# minillm vs transformers, CTranslate2 and llama.cpp on the CPU (hours; peers' venvs in ~/.cache/minillm/peers)
.PHONY: bench-peers
bench-peers: $(STAMP)
	$(BIN)/minillm bench peers --output-json bench-peers.json

clean:
	rm -rf $(VENV) site .pytest_cache

# Two replicas of the bundled model behind vLLM's router on :8000 (docs/deploy.md); Ctrl+C stops all.
.PHONY: cluster
cluster: $(STAMP)
	$(BIN)/minillm launch --replicas 2 --router-policy cache_aware
