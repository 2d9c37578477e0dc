#!/usr/bin/env bash
# The main flow on embedded defaults (SQLite + local folder): start the server, create a project and
# key, upload the sample dataset, fine-tune hone-tiny on it, wait for the tuned model's endpoint, and
# print its answers next to the base model's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HONE_DATA_DIR=${HONE_DATA_DIR:-.hone/demo}
export HONE_PORT=${HONE_PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export HONE_ADMIN_API_KEY=${HONE_ADMIN_API_KEY:-sk-hone-admin-demo}
export HONE_BASE_URL="http://127.0.0.1:${HONE_PORT}"
mkdir -p "$HONE_DATA_DIR"
.venv/bin/hone serve > "$HONE_DATA_DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$HONE_BASE_URL/healthz" > /dev/null && break; sleep 0.2; done
PROJECT=$(.venv/bin/hone projects create quickstart)
API_KEY=$(.venv/bin/hone keys create "$PROJECT" --name demo)
echo "server $HONE_BASE_URL  project $PROJECT  (log: $HONE_DATA_DIR/server.log)"
.venv/bin/python examples/quickstart.py --base-url "$HONE_BASE_URL/v1" --api-key "$API_KEY"
