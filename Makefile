# `make run` sets everything up and opens the studio; `make test` sets everything up and runs the tests.
# Both are quick the second time: setup is redone only when pyproject.toml or the bootstrap changes.
# Variables: PYTHON, VENV, TORCH_SPEC, TORCH_INDEX_URL, CMAKE_ARGS (see installers/bootstrap.sh).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.hearth-installed
export PYTHON VENV TORCH_SPEC TORCH_INDEX_URL

.PHONY: install run test test-quality bench clean dist test-dist install-desktop

install: $(STAMP)

$(STAMP): pyproject.toml installers/bootstrap.sh
	bash installers/bootstrap.sh
	touch $@

# Exit code 2 is `hearth` saying, in one line, that there is no display; make need not add its own.
run: install
	@$(VENV)/bin/hearth; rc=$$?; if [ $$rc -eq 2 ]; then exit 0; else exit $$rc; fi

test: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest -m "not dist and not quality" --durations=40

# Quality measurements that take minutes of CPU each (GPTQ against round-to-nearest on SmolLM2).
test-quality: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest -m quality

# Figures for the README (not tests): JSON in bench-results.json.
bench: install
	$(VENV)/bin/hearth bench --json bench-results.json

# The one-folder frozen build for this OS (dist/hearth/), with PyInstaller (pyproject's `dist` extra).
# Rebuilt only when the code, resources or spec changed (about 15 minutes on 2 busy cores).
DIST_EXE := dist/hearth/hearth
DIST_INPUTS := $(shell find app resources installers/pyinstaller -type f -not -path '*/__pycache__/*' 2>/dev/null)
dist: $(DIST_EXE)

$(DIST_EXE): $(STAMP) pyproject.toml $(DIST_INPUTS)
	@$(VENV)/bin/python -c "import PyInstaller" 2>/dev/null || $(VENV)/bin/python -m pip install -q "pyinstaller>=6.10,<7"
	$(VENV)/bin/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller installers/pyinstaller/hearth.spec
	touch $@
	@du -sh dist/hearth

# The frozen app, offscreen: opens its window, starts its worker, streams one answer (tests/dist).
test-dist: $(DIST_EXE)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest -m dist tests/dist

# A launcher in the user's application menu (Linux): the built bundle when there is one, else the venv.
install-desktop: install
	bash installers/linux/install-desktop.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
