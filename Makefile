# Two commands for a newcomer:  `make app` (set up, then start the dashboard)  and  `make test`.
# On a machine with an NVIDIA GPU: `make app GPU=1` (or `make setup GPU=1`, `make test GPU=1`) installs
# TensorFlow with CUDA (requirements-gpu.txt) instead of the CPU build (requirements-cpu.txt).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The stamp holds the TensorFlow build installed in $(VENV): "cpu" or "gpu" (an empty stamp, from before the
# GPU path existed, is "cpu"). GPU=1 asks for the CUDA build, GPU=0 for the CPU build; without GPU= the build
# already installed is kept (so `make app` after `make setup GPU=1` stays on the GPU), cpu on a new venv.
STAMP  := $(VENV)/.installed
# Tests run in TEST_WORKERS processes (pytest-xdist), a test module per process at a time, so a module's
# fixtures are built once; while one process trains (TensorFlow's threads) the other runs page tests.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile
HAVE_BUILD := $(if $(wildcard $(STAMP)),$(or $(strip $(shell cat $(STAMP))),cpu))
BUILD  := $(if $(filter 1 yes true,$(GPU)),gpu,$(if $(filter 0 no false,$(GPU)),cpu,$(or $(HAVE_BUILD),cpu)))

.PHONY: setup app test test-fast lint browser-deps clean switch-build

setup: $(STAMP)

# Switching builds starts from an empty venv: tensorflow-cpu and tensorflow[and-cuda] write the same package,
# and uninstalling one leaves the other's files (and 3 GB of CUDA wheels) behind.
ifneq ($(HAVE_BUILD),)
ifneq ($(HAVE_BUILD),$(BUILD))
$(STAMP): switch-build
switch-build:
	@echo "$(VENV) has the $(HAVE_BUILD) build of TensorFlow; rebuilding it with the $(BUILD) build"
	test -f $(VENV)/pyvenv.cfg && rm -rf $(VENV)
endif
endif

$(STAMP): requirements.txt requirements-$(BUILD).txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-$(BUILD).txt
	# medmnist without its dependencies: they would install torch, which we never use
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python scripts/check_env.py --build $(BUILD)
	echo $(BUILD) > $(STAMP)

app: setup
	$(BIN)/python -m streamlit run app.py

browser-deps:
	scripts/install-chromium.sh

lint: setup
	$(BIN)/ruff check .

test: setup browser-deps lint
	$(BIN)/python -m pytest $(PARALLEL)

# Everything but the real-browser test, for a quick loop while editing.
test-fast: setup lint
	$(BIN)/python -m pytest $(PARALLEL) -m "not browser"

clean:
	rm -rf $(VENV) .pytest_cache test-output
