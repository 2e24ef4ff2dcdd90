# The two commands of the README:
#   make demo   creates .venv, installs labelflow, converts the example export
#   make test   runs the test suite (.ci/run calls exactly this)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/labelflow formats
	$(BIN)/labelflow detect tests/fixtures/example/annotations/instances_demo.json
	$(BIN)/labelflow run configs/example.yaml
	$(BIN)/labelflow convert build/demo --to coco --out build/demo_coco
	@echo "Parquet in build/demo, COCO again in build/demo_coco"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf build $(VENV)
