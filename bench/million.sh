#!/usr/bin/env bash
# The million-connection run on one box.
#
#   bench/million.sh [--target N] [--hold SECS] [--broadcasts M] [--bin DIR]
#                    [--out DIR] [--workers W]
#
# 1. Applies sysctl.conf (root) and checks the box with tuning/tune.sh.
# 2. Starts wsgate: one process if RLIMIT_NOFILE allows the target, otherwise
#    the one-box cluster: K processes on one port (SO_REUSEPORT) linked by a
#    local redis-server, so K × limit connections fit.
# 3. Runs `wsbench connect` (itself split over processes for the same
#    reason) to the target over source addresses 127.0.0.2…, measures server
#    and kernel memory per connection, broadcasts to everyone through the
#    admin API and measures fan-out completion, then closes everything.
# Everything stays on 127.0.0.0/8 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

target=1000000
hold=5
broadcasts=5
bin=target/release
out=bench/results
workers=0
port=8080
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --broadcasts) broadcasts=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "million.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
log() { echo "million.sh: $*" >&2; }

if [ ! -x "$bin/wsgate" ] || [ ! -x "$bin/wsbench" ]; then
  log "building release binaries"
  cargo build --release --bin wsgate --bin wsbench
  bin=target/release
fi

# --- 1. the box ----------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  sysctl -e -q -p sysctl.conf || log "some sysctls could not be applied"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
bash tuning/tune.sh --target "$target" --both-ends || log "tune.sh reports shortfalls (above); going on with what this box allows"

nofile=$(ulimit -n)
cap=$(( nofile - 1500 ))
# SO_REUSEPORT spreads by hash: leave ~8% headroom per process.
procs=$(( (target * 108 / 100 + cap - 1) / cap ))
[ "$procs" -lt 1 ] && procs=1
cores=$(nproc)
if [ "$workers" = 0 ]; then
  workers=$(( cores / procs )); [ "$workers" -lt 1 ] && workers=1
fi
log "target $target; descriptor limit $nofile per process → $procs wsgate process(es) × $workers worker(s) on port $port"

# --- 2. servers --------------------------------------------------------------------
pids=()
redis_pid=
cleanup() {
  # The nodes first (they drain), then the redis-server they are linked to.
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
redis_args=()
if [ "$procs" -gt 1 ]; then
  redis_bin=${REDIS_SERVER:-$(command -v redis-server || true)}
  [ -n "$redis_bin" ] || { log "redis-server is needed for the one-box cluster (apt-get install redis-server)"; exit 1; }
  "$redis_bin" --port 6391 --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
    --maxclients 10000 >/dev/null 2>&1 &
  redis_pid=$!
  redis_args=(--redis redis://127.0.0.1:6391/ --cluster-prefix million)
  # Nodes would start anyway (the bridge reconnects), but with a warning each.
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/6391) 2>/dev/null && break
    sleep 0.1
  done
fi
server_pid_args=()
# Many small processes: each preallocates its workers' inboxes (~3.4 MiB at
# the default depth); a few thousand queued publishes are plenty here.
inbox_args=""
[ "$procs" -gt 1 ] && inbox_args="--inbox-depth 4096"
for i in $(seq 0 $((procs - 1))); do
  "$bin/wsgate" --listen "127.0.0.1:$port" --workers "$workers" \
    --admin-listen "127.0.0.1:$((9100 + i))" "${redis_args[@]}" \
    --ping-interval 600s --idle-timeout 900s --handshake-timeout 60s \
    --max-messages-per-sec 0 --log-level warn $inbox_args &
  pids+=($!)
  server_pid_args+=(--server-pid $!)
done
for i in $(seq 0 $((procs - 1))); do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$((9100 + i))) 2>/dev/null && break
    sleep 0.1
  done
done
sleep 1
log "servers up"

# --- 3. load -----------------------------------------------------------------------
# A quarter of each address's ports at most (see tuning/tune.sh: connect()
# slows to a crawl once an address's even ports are used up).
ips=$(( target / 16000 + 2 ))
last_ip=$(( 2 + ips ))
[ "$last_ip" -gt 254 ] && last_ip=254
started=$(date +%s)
"$bin/wsbench" connect --url "ws://127.0.0.1:$port/ws" --connections "$target" \
  --src-ips "127.0.0.2-127.0.0.$last_ip" --concurrency 256 --hold "$hold" \
  --broadcasts "$broadcasts" --broadcast-admin 127.0.0.1:9100 \
  "${server_pid_args[@]}" --timeout 420 --out "$out/million.json" | tee "$out/million.md"
log "done in $(( $(date +%s) - started )) s; results in $out/million.json and $out/million.md"
{
  echo
  echo "box: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), RLIMIT_NOFILE $nofile"
  echo "servers: $procs wsgate process(es) × $workers worker(s) on one port$( [ "$procs" -gt 1 ] && echo ', linked by redis-server')"
  echo "command: bench/million.sh --target $target --hold $hold --broadcasts $broadcasts"
} | tee -a "$out/million.md"
"$bin/wsbench" report "$out/million.json" --out "$out" || log "no charts drawn"
