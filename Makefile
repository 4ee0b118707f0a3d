# Conveniences; README's two commands need nothing but python3.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench clean
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -e '.[test]' && touch $@
run: $(VENV)/.installed
	$(VENV)/bin/mail2sms serve -c config.example.toml
test: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy && $(PY) -m pytest
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy
clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
