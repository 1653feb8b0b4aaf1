# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lorakit-installed
# The test extra adds pytest, playwright, openai and llama-cpp-python, which pip compiles (minutes): the demo
# does not wait for it.
TSTAMP := $(VENV)/.lorakit-test-installed

.PHONY: demo test install clean bench browser screenshots parity

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e .
	@touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(TSTAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lorakit quickstart

test: $(TSTAMP) browser
	$(PY) -m pytest

# The board's browser tests drive Debian's Chromium (Playwright never downloads a browser here), with a CJK font
# so that Chinese text renders in the screenshots. Installed once, as root, when missing.
browser:
	@command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; }

# README's board pictures: the browser tests write one screenshot per page into docs/board/.
screenshots: $(TSTAMP) browser
	LORAKIT_BOARD_SCREENSHOTS=docs/board $(PY) -m pytest tests/board/test_board_browser.py

# The export parity check on a run folder: make parity RUN=runs/NAME (GGUF q8_0 + q4_k_m, quantised and run by llama.cpp).
parity: $(TSTAMP)
	@test -n "$(RUN)" || { echo "usage: make parity RUN=runs/NAME"; exit 2; }
	$(VENV)/bin/lorakit export --adapter $(RUN) --out $(RUN)-export --gguf q8_0 --gguf q4_k_m

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
