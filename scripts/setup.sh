#!/usr/bin/env bash
# Creates .venv and installs Hone with the server, trainer, plotting and test tools. Re-runs install only when
# pyproject.toml or scripts/structured-deps.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hone-installed
want=$(cat pyproject.toml scripts/structured-deps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # Never let pip resolve torch from the index (it would pull CUDA builds): the `train`
  # extra pins torch==2.13.0, which these machines install from a local CPU wheel.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[server,train,plot,dev]'
  # xgrammar (response_format's constrained decoding, hone_kernel/structured.py) without its dependencies: it
  # requires triton on Linux, a GPU compiler it never imports on CPU; its one other need is apache-tvm-ffi.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r scripts/structured-deps.txt
  echo "$want" > "$stamp"
fi
# Debian packages the tests use, installed only when missing, and only where we are root (as CI is) or sudo needs
# no password; otherwise say what to install:
#   prometheus          promtool and prometheus check and run deploy/prometheus
#   kubernetes-client   kubectl, whose `kubectl kustomize` renders deploy/kubernetes
#   chromium            the headless browser tests/test_console.py drives with Playwright (its own browser
#                       downloads are never used: `playwright install` is not run)
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  as_root=(false)
fi
apt_updated=0
apt_install() {  # apt_install COMMAND PACKAGE: install PACKAGE unless COMMAND is already there
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return 0
  install_it() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" \
      >/dev/null 2>&1
  }
  if install_it; then return 0; fi
  if [ "$apt_updated" = 0 ] && "${as_root[@]}" apt-get update -qq >/dev/null 2>&1; then
    apt_updated=1
    install_it && return 0
  fi
  echo "setup: $command is missing and could not be installed: apt-get install $package (as root)" >&2
}
apt_install promtool prometheus
apt_install kubectl kubernetes-client
apt_install chromium chromium
