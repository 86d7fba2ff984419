# The two commands of the README. Each does all set-up on a fresh machine.
#   make serve   run the gateway on the embedded default (SQLite, shipped Qwen3 tokenizer, fake upstream)
#   make test    lint, then run the whole test suite (starts PostgreSQL and Redis if they are not running)
#   make bench   the gateway benchmark (fake upstream + gateway + wrk, numbers on stdout)
#   make bench-tokens   the token-counting benchmark (cold, grown conversations, memory with three models)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: serve test bench bench-tokens install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/cachegate serve

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	scripts/ensure-services.sh
	$(BIN)/pytest; status=$$?; \
	  if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests: that is a failure" >&2; fi; \
	  exit $$status

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/bench.py

bench-tokens: $(STAMP)
	$(BIN)/python bench/tokens.py --memory

clean:
	rm -rf $(VENV) data build src/*.egg-info .pytest_cache .hypothesis
