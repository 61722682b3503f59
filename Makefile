# The two commands: `make demo` and `make test`. Everything else they need is set up here.
# The interpreter: PYTHON if given, else python3.12 or python3.13 on the PATH, else one that
# pyenv has installed (3.12, then 3.13).
PYTHON ?= $(shell for v in 3.12 3.13; do \
	  p=$$(command -v python$$v 2>/dev/null) && "$$p" -c 'import sys' 2>/dev/null && { echo "$$p"; exit 0; }; \
	  for r in "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$$v*/bin/python$$v; do [ -x "$$r" ] && { echo "$$r"; exit 0; }; done; \
	done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all docs bench lint clean

$(STAMP): pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "make: vifit needs Python 3.12 or 3.13; install one (e.g. 'pyenv install 3.12' or your system's python3.12 package) or run 'make PYTHON=/path/to/python3.12 ...'"; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' || { echo "make: $(PYTHON) is older than Python 3.12; vifit needs 3.12 or newer"; exit 2; }
	@echo "make: using $(PYTHON) ($$($(PYTHON) --version))"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	@echo "make: interpreter $$($(BIN)/python -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	$(BIN)/vifit demo

# Two workers, one test file each at a time: JAX compiles on one core, so both cores are used.
test: $(STAMP)
	@echo "make: interpreter $$($(BIN)/python -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# Everything, including the slow tests (long fits, NUTS comparisons on every problem).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m ""

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) site vifit-demo .pytest_cache
