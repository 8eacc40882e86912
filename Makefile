VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := -c constraints.txt

.PHONY: demo stream-demo lint test test-es test-es8 test-latest install install-dev bench mutation clean system-deps

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

# Streaming end to end on this machine: Pub/Sub emulator (gcloud + Java), the ES double or $$ES_URL.
stream-demo: $(VENV)/.installed
	$(VENV)/bin/imagescore stream-demo

# WordNet 3.0 (Debian's wordnet-base) is the adjective lexicon of `imagescore analyze`.
system-deps:
	@test -d /usr/share/wordnet || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null) \
	  || echo "note: install WordNet for analyze's adjectives: sudo apt-get install wordnet-base"; }

# -p randomly: random test order, with the seed that replays it printed in the header (docs/testing.md).
# pyflakes, import order, bugbear and pyupgrade (ruff.toml).
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

# -n: worker processes (pytest-xdist), each with its own services on free ports; --dist loadfile keeps a
# module's tests (and its module-scoped fixtures) in one worker. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: lint $(VENV)/.installed-dev system-deps
	$(PY) -m pytest -p randomly -n $(TEST_WORKERS) --dist loadfile

# Every Elasticsearch suite: tests/test_es_*.py and tests/test_*_es.py (name new ones that way), and the
# boosting queries, whose mirror-vs-explain parity tests run only against a real cluster.
ES_SUITES := $(sort $(wildcard tests/test_es_*.py tests/test_*_es.py)) tests/test_boosting_query.py

# The Elasticsearch suites against a real cluster: ES_URL=https://host:9200 [ES_API_KEY=...] make test-es
# Tests that need the double (fault injection, its request log) skip there and say why.
test-es: $(VENV)/.installed-dev
	@test -n "$$ES_URL" || { echo "make test-es needs ES_URL=https://host:9200 (and ES_API_KEY or ES_USERNAME/ES_PASSWORD); without it the suites run against the test double: make test"; exit 2; }
	$(PY) -m pytest $(ES_SUITES)

# The Elasticsearch suites again with the 8.x client (the code supports both majors).
test-es8: $(VENV)/.installed-dev
	$(PIP) install -q --no-deps --target .es8 'elasticsearch>=8.18,<9' 'elastic-transport>=8.13,<9'
	PYTHONPATH=.es8 $(PY) -m pytest $(ES_SUITES)

# The suites that touch Beam, Elasticsearch and Pub/Sub on the newest releases setup.py allows, in a venv
# of their own: no constraints.txt, except its torch pin (a looser one pulls a multi-GB CUDA build here).
# setup.py's upper bounds are the versions this last installed and passed (docs/testing.md).
LATEST_VENV := .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python
LATEST_SUITES := $(sort $(ES_SUITES) $(wildcard tests/test_backfill*.py tests/test_stream*.py))

$(LATEST_VENV)/.installed-dev: setup.py constraints.txt
	python3 -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install --upgrade "pip>=24" wheel
	$(LATEST_PY) -m pip install --upgrade --upgrade-strategy eager "$$(grep -E '^torch==' constraints.txt)" -e ".[dev]"
	touch $@

test-latest: $(LATEST_VENV)/.installed-dev
	$(LATEST_PY) -m pip list --format=freeze | grep -iE '^(apache-beam|elasticsearch|elastic-transport|google-cloud-pubsub|tritonclient|numpy|torch)=='
	$(LATEST_PY) -m pytest -p randomly $(LATEST_SUITES)

bench: $(VENV)/.installed-dev
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Mutation testing of the arithmetic and policy modules (setup.cfg's [mutmut], docs/testing.md); not part of
# `make test`. One line per module; fails when one kills under 90 % of its non-equivalent mutants.
$(VENV)/.installed-mutation: $(VENV)/.installed-dev
	$(PIP) install $(CONSTRAINTS) -e ".[dev,mutation]"
	touch $@

mutation: $(VENV)/.installed-mutation
	$(PY) bench/mutation.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) .es8 build *.egg-info .pytest_cache mutants
