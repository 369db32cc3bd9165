# Quantized LLMs, locally -- every command sets itself up on a fresh machine.
#   make course   install, build the course models, run every notebook into build/
#   make test     install, lint, build the course models, unit tests + every English notebook (nbmake)
#   make lint     ruff format --check and ruff check (pyproject.toml's [tool.ruff])
#   make lab      JupyterLab on the course
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python has no wheel here: pip builds it from source once, then reuses its cached wheel.
# The multimodal part is left out (a quarter of the build); on CPUs with AMX, so are llama.cpp's AMX
# kernels, which crashed there (tools/llama_cpp_cmake_args.py says why).
export CMAKE_ARGS ?= $(shell $(PYTHON) tools/llama_cpp_cmake_args.py)
# Tests and CI pin threads so parallel work does not oversubscribe small machines.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning; on a busy 2-core machine
# spinning threads made torch and llama.cpp 5-10x slower when started from the main thread.
TEST_ENV := QLLM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false

.PHONY: setup lint models course course-zh test browser-deps lab clean clean-models

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python tools/install_estimate.py $(BIN)/python
	$(BIN)/python -m pip install --progress-bar off -e '.[all]'
	@touch $@

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

models: setup
	@# llama.cpp's HF->GGUF converter (notebook 04b, and the gguf-from-hf model) ships only in the
	@# llama-cpp-python sdist: take it from pip's cache, or fetch the sdist from PyPI once (76 MB, keeps 2 MB).
	$(BIN)/python -m course.gguf_convert converter --download
	$(BIN)/python -m course.models build
	@# The course's own GGUF types (F16, Q8_0, Q4_0, as notebook 04b makes them): the local hub serves them
	@# beside the Q4_K_M file, so notebook 01's repo has several files to choose from (about 1 GB).
	$(BIN)/python -m course.gguf_convert types

course: models
	$(BIN)/python tools/run_course.py

# The Chinese edition (notebooks/zh-CN/): the same program, prose in Chinese; into build/*/zh-CN/.
# `make test` does not execute it (docs/testing.md says why).
course-zh: models
	$(BIN)/python tools/run_course.py --zh-CN

# The browser test drives Debian's Chromium: installed here when this user may (root or sudo);
# otherwise that test is skipped and says why (.ci/run requires it).
browser-deps:
	@tools/ci_system_deps.sh || echo "(no Chromium: the browser test will be skipped)"

# The lint comes first: a finding fails the run before the long tests start.
test: lint models browser-deps
	$(TEST_ENV) $(BIN)/python -m pytest

lab: models
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache

clean-models:
	$(BIN)/python -m course.models clean

# Mutation check of the guards (fit check, quality gate, GGUF validation, hub presence and size, history
# trimming, context fit): every small deliberate bug in them must fail a test. No course models needed;
# about 20 minutes on 2 cores, so it is not part of `make test` or CI. See tools/mutation_check.py.
.PHONY: mutation
mutation: setup
	$(TEST_ENV) $(BIN)/python tools/mutation_check.py
