# The two commands a newcomer runs are `make reproduce` and `make test`; both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.polyalign-setup
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup test rehearsal reproduce bench export readme check-export clean-runs

setup: $(STAMP)

# Re-run only when the packaging inputs change; the stamp makes a second `make setup` instant.
$(STAMP): settings.ini setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23"
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name polyalign --display-name "polyalign" >/dev/null
	touch $(STAMP)

test: setup
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests --ignore=tests/test_export_sync.py --ignore=tests/test_e2e_rehearsal.py
	$(MAKE) --no-print-directory check-export

# The paper profile's code paths on this CPU (local hub mirror, two training processes), end to end; CI runs it.
rehearsal: setup
	$(BIN)/python -m pytest -q tests/test_e2e_rehearsal.py

reproduce: setup
	$(BIN)/polyalign reproduce --profile tiny

bench: setup
	$(BIN)/python papers/polyalign/bench/run.py

# Regenerate the library and the README from the notebooks (commit the result).
export: setup
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/jupyter nbconvert --to markdown --stdout --log-level=ERROR nbs/index.ipynb > README.md

# Fails when the notebooks and polyalign/ (or README.md) are out of sync; changes nothing.
check-export: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_export_sync.py

clean-runs:
	rm -rf runs
