#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the services and tools
# the tests use (redis-server and nginx from apt, real ones, no mocks), then
# runs formatting, clippy and every test. This is the README's test command
# and what CI runs first.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)   # tests/redis_cluster.rs: redis-cli --cluster create
command -v nginx >/dev/null || need_apt+=(nginx)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)   # tests/tuning.rs verifies tuning/wsgate.service
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# The packaged services are not needed running: tests start their own.
for svc in redis-server nginx; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
