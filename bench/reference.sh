#!/usr/bin/env bash
# The reference runs behind the figures in README.md, in one command:
#
#   bench/reference.sh [--out DIR] [--skip-million] [--million-target N]
#                      [--apply-sysctl]
#
#   --out DIR            where results go (default target/bench, a scratch
#                        folder; pass --out bench/results to replace the
#                        published figures)
#   --skip-million       leave out bench/million.sh
#   --million-target N   connections for bench/million.sh (default 1000000)
#   --apply-sysctl       let bench/million.sh apply sysctl.conf to this
#                        machine (root; machine-wide until reboot); without
#                        it, it only shows what would change
#
# Builds release binaries, then for each scenario starts a fresh wsgate on
# 127.0.0.1:8080 (admin on 127.0.0.1:9090), runs wsbench against it, and
# writes DIR/<name>.json, DIR/<name>.md and the charts of `wsbench report`.
# Last comes bench/million.sh (the one-machine million-connection run).
# Everything stays on 127.0.0.0/8, is bounded in time and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
million=1
million_target=1000000
million_args=()
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "reference.sh: $*" >&2; echo "try: bench/reference.sh --help" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] && [ -n "$2" ] || die "--out needs a value"; out=$2; shift 2 ;;
    --skip-million) million=0; shift ;;
    --million-target)
      [ $# -ge 2 ] || die "--million-target needs a value"
      case "$2" in ''|*[!0-9]*) die "--million-target must be a whole number, not '$2'" ;; esac
      million_target=$2; shift 2 ;;
    --apply-sysctl) million_args+=(--apply-sysctl); shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
mkdir -p "$out"
cargo build --release --bin wsgate --bin wsbench
bin=target/release
log() { echo "reference.sh: $*" >&2; }

server=
server_args=
stop_server() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
trap stop_server EXIT
# The load generator connects as fast as it can: these runs measure how fast
# a node takes connections, so storm shedding (--max-handshakes-per-sec auto,
# the default) is off; it would answer part of the ramp with 503.
start_server() {
  server_args="$*"
  "$bin/wsgate" --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --log-level warn \
    --ping-interval 600s --idle-timeout 900s --max-handshakes-per-sec 0 "$@" &
  server=$!
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && return 0
    sleep 0.1
  done
  log "wsgate did not start"
  exit 1
}
# run NAME ARGS...: one wsbench scenario against the running server.
run() {
  local name=$1
  shift
  log "$name: wsbench $*"
  "$bin/wsbench" "$@" --url ws://127.0.0.1:8080/ws --server-pid "$server" \
    --out "$out/$name.json" >"$out/$name.md"
  {
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), RLIMIT_NOFILE $(ulimit -n)"
    echo "server: wsgate --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --ping-interval 600s --idle-timeout 900s --max-handshakes-per-sec 0 $server_args"
    echo "command: wsbench $* --url ws://127.0.0.1:8080/ws --server-pid PID (bench/reference.sh)"
  } >>"$out/$name.md"
  "$bin/wsbench" report "$out/$name.json" --out "$out" || log "$name: no charts"
}

# Idle connections: server bytes per connection, handshakes/s.
start_server --app echo
run connect-15k connect --connections 15000 --hold 3 --src-ips 127.0.0.2-127.0.0.9
stop_server

# The same with permessage-deflate negotiated on every connection.
start_server --app echo --permessage-deflate
run connect-15k-deflate connect --connections 15000 --hold 3 --src-ips 127.0.0.2-127.0.0.9 --deflate
stop_server

# Fan-out to 15,000 subscribers of one topic: one message in flight (latency),
# then a fixed rate (throughput, the outbox batches writes).
start_server
run publish-15k broadcast --listeners 15000 --messages 300 --mode publish --src-ips 127.0.0.2-127.0.0.9
stop_server
start_server
run publish-15k-rate80 broadcast --listeners 15000 --messages 400 --rate 80 --mode publish \
  --src-ips 127.0.0.2-127.0.0.9
stop_server

# Broadcast to 15,000 connections with the receive side spread over two
# load-generator processes (one client thread would time itself).
start_server
run broadcast-15k-2procs connect --connections 15000 --processes 2 --hold 0 --settle 1 \
  --broadcasts 100 --broadcast-admin 127.0.0.1:9090 --src-ips 127.0.0.2-127.0.0.9
stop_server

# Echo round trips, 100 connections in closed loop.
start_server --app echo
run echo-100 echo --connections 100 --duration 10
stop_server

# Churn: 10,000 held while 500 per second are replaced.
start_server --app echo
run churn-10k churn --connections 10000 --rate 500 --duration 10 --src-ips 127.0.0.2-127.0.0.9
stop_server

# permessage-deflate fan-out, with and without, alternating (bench/deflate.sh).
bash bench/deflate.sh --out "$out/deflate"

if [ "$million" = 1 ]; then
  bash bench/million.sh --target "$million_target" --out "$out" "${million_args[@]}"
fi
log "done: $out"
