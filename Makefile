# kube-skydns: the two commands of the quick start are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help deps run test unit lint bench fuzz clean

## help: this list
help:
	@awk '/^## [a-z]+: /{sub(/^## /, ""); n = index($$0, ": "); printf "%s  make %-6s %s", sep, substr($$0, 1, n - 1), substr($$0, n + 2); sep = "\n"; next} /^## /{sub(/^## /, ""); printf " %s", $$0} END {print ""}' $(MAKEFILE_LIST)

## deps: install what is missing (etcd, etcdctl, dig, python3-venv via apt; the project into .venv); says what it does
deps:
	@./scripts/install-deps.sh

## run: the whole stack locally in the foreground (etcd + kube2sky + skydns + healthz); Ctrl-C stops it
run: deps
	@$(PY) scripts/run_local.py $(RUN_ARGS)

## test: every test (unit tables, real etcd + sockets integration, presubmit checks)
test: deps
	@$(VENV)/bin/lint-imports --config setup.cfg
	@$(PY) -m pytest $(PYTEST_ARGS)

## unit: only the tests that need no processes
unit: deps
	@$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

## bench: the skydns hot-path benchmarks (bench/README.md)
bench: deps
	@$(PY) bench/run.py

## fuzz: long fuzzing runs: atheris targets FUZZ_SECONDS each (default 300) when installed, then the
## hypothesis properties of tests/fuzz with FUZZ_EXAMPLES examples each (default 20000)
fuzz: deps
	@$(PY) fuzz/run.py

## clean: remove .venv and build leftovers
clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info .fuzz-corpus
