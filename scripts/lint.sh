#!/usr/bin/env bash
# Lint and type check: what CI runs before the tests (see CONTRIBUTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
