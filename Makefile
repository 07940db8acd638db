# `make run` and `make test` set up .venv on first use (and again only when
# pyproject.toml or constraints.txt change), then start the daemon / run the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[postgres,test]'
	touch $@

run: $(STAMP)
	$(BIN)/adaptd serve --config config.toml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) state .pytest_cache
