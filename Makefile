# Two commands for a newcomer:  `make app` (set up, then start the dashboard)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup app test test-fast lint browser-deps clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# medmnist without its dependencies: they would install torch, which we never use
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python scripts/check_env.py
	touch $(STAMP)

app: setup
	$(BIN)/python -m streamlit run app.py

browser-deps:
	scripts/install-chromium.sh

lint: setup
	$(BIN)/ruff check .

test: setup browser-deps lint
	$(BIN)/python -m pytest

# Everything but the real-browser test, for a quick loop while editing.
test-fast: setup lint
	$(BIN)/python -m pytest -m "not browser"

clean:
	rm -rf $(VENV) .pytest_cache test-output
