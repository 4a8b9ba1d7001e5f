# The two commands of the README: `make book` (run the notebooks, build the book) and `make test`.
# Both create .venv/ at the repository root when it is missing. `make book` installs only what the book needs
# (the project with its `book` extra, and MathJax from npm); `make test` adds the `test` extra (requirements.txt)
# and, where apt-get is available and runs as root, Debian's chromium (browser test) and dataset-fashion-mnist
# (cpu profile). Without apt-get or root both commands still work: the browser test is skipped with a note.
PROFILE ?= smoke
PY := .venv/bin/python
BOOK_STAMP := .venv/.installed-book
TEST_STAMP := .venv/.installed-test
APT := $(shell command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && echo yes)

.PHONY: setup book test lint system clean

setup: $(BOOK_STAMP)

.venv/bin/python:
	python3 -m venv .venv

$(BOOK_STAMP): pyproject.toml | .venv/bin/python
	$(PY) -m pip install -q -e '.[book]'
	npm install --silent --no-audit --no-fund --prefix .venv/npm mathjax@3
	touch $@

$(TEST_STAMP): $(BOOK_STAMP) requirements.txt pyproject.toml
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Debian packages for the tests, each only when missing; never fails.
system:
ifeq ($(APT),yes)
	@command -v chromium >/dev/null && test -d /usr/share/datasets/fashion-mnist || apt-get update -q >/dev/null \
	  || echo "note: apt-get update failed; trying the installs with the lists there are"
	@command -v chromium >/dev/null || apt-get install -y -q --no-install-recommends chromium \
	  || echo "note: Debian's chromium could not be installed; the browser test will be skipped"
	@test -d /usr/share/datasets/fashion-mnist || apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
	  || echo "note: dataset-fashion-mnist could not be installed; the cpu profile will try to download it"
else
	@command -v chromium >/dev/null || echo "note: no apt-get as root here; the browser test will be skipped" \
	  "(install Debian's chromium: apt-get install --no-install-recommends chromium)"
endif

book: setup
	$(PY) -m helpers.run --profile $(PROFILE)

test: $(TEST_STAMP) system
	$(PY) -m pytest

lint: $(TEST_STAMP)
	$(PY) -m ruff check helpers tests benchmarks notebooks

clean:
	rm -rf _build artifacts
