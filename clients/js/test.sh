#!/usr/bin/env bash
# The @wsgate/client test suite, from a fresh Debian machine: builds wsgate
# (the tests run the real server), installs the pinned npm dev dependencies
# (npm ci) and Debian's chromium when missing, then runs the type check, the
# Node tests and the headless Chromium tests.
#
#   clients/js/test.sh            everything
#   clients/js/test.sh node       Node tests only (no chromium needed)
#   clients/js/test.sh browser    Chromium tests only
#
# WSGATE_BIN=path uses an already built wsgate; CHROMIUM=path another browser.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-all}
case "$what" in all | node | browser) ;; *) echo "usage: $0 [all|node|browser]" >&2; exit 2 ;; esac

command -v node >/dev/null || { echo "clients/js/test.sh: node (18 or newer) is not on PATH" >&2; exit 1; }
command -v npm >/dev/null || { echo "clients/js/test.sh: npm is not on PATH" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || { echo "clients/js/test.sh: node $(node --version) is older than 18" >&2; exit 1; }

if [ -z "${WSGATE_BIN:-}" ]; then
  (cd ../.. && cargo build --bin wsgate --locked)
fi

# npm ci reinstalls from package-lock.json; skip it when node_modules was
# installed from this very lock file.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.installed-from 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --no-audit --no-fund
  echo "$lock_sum" > node_modules/.installed-from
fi

if [ "$what" != node ] && [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  command -v apt-get >/dev/null || {
    echo "clients/js/test.sh: chromium is missing; install it (or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
  }
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi

status=0
if [ "$what" = all ]; then
  npx --no-install tsc -p tsconfig.json || status=1
fi
# One test file at a time: each starts its own wsgate, and timing bounds are
# asserted, so they should not compete for the CPU with each other.
if [ "$what" != browser ]; then
  node --test --test-concurrency=1 test/node/*.test.js || status=1
  # Node's own WebSocket (undici): global from Node 22, behind a flag in 20 and 21.
  if [ "$node_major" -ge 22 ]; then
    node --test test/global/*.test.js || status=1
  elif node --experimental-websocket -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null; then
    node --experimental-websocket --test test/global/*.test.js || status=1
  else
    echo "clients/js/test.sh: node $(node --version) has no built-in WebSocket; test/global skipped" >&2
  fi
fi
if [ "$what" != node ]; then
  node --test test/browser/*.test.js || status=1
fi
exit $status
