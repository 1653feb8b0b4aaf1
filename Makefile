# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lorakit-installed

.PHONY: demo test install clean bench parity

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lorakit quickstart

test: $(STAMP)
	$(PY) -m pytest

# The export parity check on a run folder: make parity RUN=runs/NAME (GGUF q8_0 + q4_0 through llama.cpp).
parity: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make parity RUN=runs/NAME"; exit 2; }
	$(VENV)/bin/lorakit export --adapter $(RUN) --out $(RUN)-export --gguf q8_0 --gguf q4_0

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
