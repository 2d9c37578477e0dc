#!/usr/bin/env bash
# Runs the whole test suite (needs PostgreSQL on 127.0.0.1:5432, database `test`, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Three workers, one test module each at a time (module fixtures train once; a package whose modules share a tuned
# model goes to one worker whole, tests/conftest.py). With trainers and engines forked warm (service/warm_start.py)
# the suite waits on its subprocesses more than it computes: a third worker on the 2 cores took a run from 11:30
# to 9:08 (2026-12-04); with one warm interpreter per worker for the servers, their trainers and their engines,
# 7:03 (2026-12-05); on a faster VM of the same kind 3:54, and 4:52-6:13 with 1,199 tests; 4:49 once
# schemathesis fuzzed each operation with one key only (README, "Whole suite"). Modules run in the
# order tests/conftest.py collects them (longest first), not xdist's (most tests first).
exec .venv/bin/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder "$@"
