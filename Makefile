VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := -c constraints.txt

.PHONY: demo test install install-dev bench clean

$(VENV)/bin/activate:
	python3 -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" wheel

$(VENV)/.installed: $(VENV)/bin/activate setup.py constraints.txt
	$(PIP) install $(CONSTRAINTS) -e ".[demo]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/activate setup.py constraints.txt
	$(PIP) install $(CONSTRAINTS) -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/imagescore demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest

bench: $(VENV)/.installed-dev
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
