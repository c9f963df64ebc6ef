# Everything a fresh machine needs: `make demo` runs the main job, `make test` the tests.
# Both create .venv, install the CPU build of torch pinned below and the package, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that the tests pin (it lies on the CI machines' disk; override on others,
# e.g. `make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"`).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast bench clean setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,latent,metrics,studio]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sketchlab demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -x --durations=15

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -x -m "not slow"

bench: $(VENV)/.installed
	$(PY) benchmarks/raster.py
	$(PY) benchmarks/rnn.py
	$(PY) benchmarks/diffusion.py
	$(PY) benchmarks/augment.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
