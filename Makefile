# `make run` and `make test` set up .venv on first use (and again only when
# pyproject.toml or constraints.txt change), then start the daemon / run the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test install clean initializer

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[postgres,test]'
	touch $@

run: $(STAMP)
	$(BIN)/adaptd serve --config config.toml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The packaged initializer (adaptd/initializers/m4-hourly.adi): meta-trained on M4 Hourly with
# the default model shape, so a new installation adapts well on day one. It starts from a
# pretrained initializer, not the file it replaces, so the file follows from the data and the
# seed alone; 1000 iterations take about 5 minutes on 2 cores.
INIT_DIR := build/initializer
initializer: $(STAMP)
	rm -rf $(INIT_DIR) && mkdir -p $(INIT_DIR) adaptd/initializers
	printf '[store]\nurl = "sqlite:///%s/$(INIT_DIR)/m4.db"\n' "$(CURDIR)" > $(INIT_DIR)/config.toml
	$(BIN)/adaptd meta-train --config $(INIT_DIR)/config.toml --m4 ../shared/data/m4/Hourly-train.csv \
		--from-pretrained --iterations 1000 --export adaptd/initializers/m4-hourly.adi

clean:
	rm -rf $(VENV) state .pytest_cache
