#!/usr/bin/env bash
# Runs the whole test suite (needs PostgreSQL on 127.0.0.1:5432, database `test`, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Two workers, one test module each at a time (module fixtures train once; a package whose modules share a tuned
# model goes to one worker whole, tests/conftest.py): the suite is mostly waiting on trainer and engine
# subprocesses, so two keep both cores busy. Modules run in the order tests/conftest.py collects them (longest
# first), not xdist's (most tests first).
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
