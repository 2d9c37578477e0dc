#!/usr/bin/env bash
# Runs the whole test suite (needs PostgreSQL on 127.0.0.1:5432, database `test`, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Three workers, one test module each at a time (module fixtures train once; a package whose modules share a tuned
# model goes to one worker whole, tests/conftest.py). The suite is CPU-bound on the 2 cores: a fourth worker read
# 5:58 against three's 6:05 on a warm checkout but 6:03 against 5:52-5:53 in clean-clone runs, where each worker's
# collection is cold (2026-12-05; README, "Whole suite", has the history). Trainers, engines and test servers fork
# from one warm interpreter for the run (tests/support.py). Modules run in the order tests/conftest.py collects them
# (longest first), not xdist's (most tests first).
exec .venv/bin/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder "$@"
