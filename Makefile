# The two commands: `make up` (install + run on the embedded defaults) and `make test`.
# Python 3.11: the fastest build of it the machine has (pipelines/interpreter.py: a
# profile-optimised build scores ~13 % more events per CPU second than one built without),
# timed once, when the virtual environment is created. Override: PYTHON=/path/to/python3.11.
PYTHON ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test install clean

$(BIN)/python:
	@py='$(PYTHON)'; \
	if [ -z "$$py" ]; then \
	  finder=$$(command -v python3.11 || command -v python3) || \
	    { echo "riskstream needs Python 3.11: install it, or set PYTHON=/path/to/python3.11"; exit 1; }; \
	  echo "choosing the fastest Python 3.11 on this machine (pipelines/interpreter.py) ..."; \
	  py=$$("$$finder" pipelines/interpreter.py) || exit 1; \
	fi; \
	echo "$$py -m venv $(VENV)"; \
	"$$py" -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/riskstream up

# Real receivers from Debian's packages: Chromium renders the live dashboard and the report,
# Alertmanager receives alerts. Best effort: where they cannot be installed (no apt, no root)
# their tests are skipped with a message.
test: $(STAMP)
	-@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  command -v prometheus-alertmanager >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq chromium prometheus-alertmanager) >/dev/null 2>&1; } || \
	  echo "chromium/alertmanager not installed: their tests will be skipped"
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache
