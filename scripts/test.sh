#!/usr/bin/env bash
# Runs the whole test suite (needs PostgreSQL on 127.0.0.1:5432, database `test`, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
