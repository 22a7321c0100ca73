# `make run` sets everything up and opens the studio; `make test` sets everything up and runs the tests.
# Both are quick the second time: setup is redone only when pyproject.toml or the bootstrap changes.
# Variables: PYTHON, VENV, TORCH_SPEC, TORCH_INDEX_URL, CMAKE_ARGS (see installers/bootstrap.sh).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.hearth-installed
export PYTHON VENV TORCH_SPEC TORCH_INDEX_URL

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml installers/bootstrap.sh
	bash installers/bootstrap.sh
	touch $@

# Exit code 2 is `hearth` saying, in one line, that there is no display; make need not add its own.
run: install
	@$(VENV)/bin/hearth; rc=$$?; if [ $$rc -eq 2 ]; then exit 0; else exit $$rc; fi

test: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest

# Figures for the README (not tests): JSON in bench-results.json.
bench: install
	$(VENV)/bin/hearth bench --json bench-results.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
