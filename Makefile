# One command for the main job, one for the tests; both create .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= results/demo

.PHONY: demo test bench profiles clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch is pinned to 2.13.0 (the CPU build available offline on the dev machines).
$(VENV)/.full: $(VENV)/.core
	$(PY) -m pip install -q -e ".[runner,test]"
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/syncintellects demo --out $(OUT) --fresh

test: $(VENV)/.full
	$(PY) -m pytest -x -p no:cacheprovider

bench: $(VENV)/.core
	$(PY) benchmarks/bench_simulator.py

profiles: $(VENV)/.core
	$(PY) -m simulator.profiles.derive_zoo

clean:
	rm -rf $(VENV) results .pytest_cache
