# The two commands of the README: `make book` (run the notebooks, build the book) and `make test`.
# Both create .venv/ at the repository root when it is missing and install requirements.txt into it.
PROFILE ?= smoke
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup book test lint clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	npm install --silent --no-audit --no-fund --prefix .venv/npm mathjax@3
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) \
	  || echo "note: Debian's chromium is not installed; the browser test will be skipped"
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y -q dataset-fashion-mnist \
	  || echo "note: dataset-fashion-mnist is not installed; the cpu profile will try to download it"
	touch $@

book: setup
	$(PY) -m helpers.run --profile $(PROFILE)

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check helpers tests benchmarks notebooks

clean:
	rm -rf _build artifacts
