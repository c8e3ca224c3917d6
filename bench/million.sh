#!/usr/bin/env bash
# The million-connection run on one machine.
#
#   bench/million.sh [--target N] [--hold SECS] [--broadcasts M] [--bin DIR]
#                    [--out DIR] [--workers W] [--port P]
#                    [--io-backend epoll|io-uring]
#                    [--apply-sysctl | --show-sysctl]
#
#   --target N      connections to open (default 1000000)
#   --hold SECS     how long to hold them all open (default 5)
#   --broadcasts M  broadcasts to everyone while held (default 5)
#   --bin DIR       where wsgate and wsbench are (default target/release,
#                   built if missing)
#   --out DIR       results: million.json, million.md and charts (default
#                   target/bench, a scratch folder; bench/results/ holds the
#                   published figures and is only written when asked)
#   --workers W     workers per wsgate process (default: cores / processes)
#   --port P        the WebSocket port on 127.0.0.1 (default 8080); admin
#                   listeners use 127.0.1.1:9100, :9101, ... and
#                   redis-server 6391
#   --io-backend B  the servers' event loop (default epoll)
#   --apply-sysctl  apply sysctl.conf to this machine first (root; changes
#                   kernel settings machine-wide until reboot)
#   --show-sysctl   print what --apply-sysctl would change, and exit
#
# 1. Shows what sysctl.conf would change (applies it only with
#    --apply-sysctl) and checks the machine with tuning/tune.sh.
# 2. Starts wsgate: one process if RLIMIT_NOFILE allows the target, otherwise
#    the one-machine cluster: K processes on one port (SO_REUSEPORT) linked by
#    a local redis-server, so K × limit connections fit.
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
out=target/bench
workers=0
port=8080
io_backend=epoll
sysctl_mode=show
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "million.sh: $*" >&2; echo "try: bench/million.sh --help" >&2; exit 2; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
number() { case "$2" in ''|*[!0-9]*) die "$1 must be a whole number, not '$2'" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --target) value "$@"; number "$1" "$2"; target=$2; shift 2 ;;
    --hold) value "$@"; number "$1" "$2"; hold=$2; shift 2 ;;
    --broadcasts) value "$@"; number "$1" "$2"; broadcasts=$2; shift 2 ;;
    --bin) value "$@"; bin=$2; shift 2 ;;
    --out) value "$@"; out=$2; shift 2 ;;
    --workers) value "$@"; number "$1" "$2"; workers=$2; shift 2 ;;
    --port) value "$@"; number "$1" "$2"; port=$2; shift 2 ;;
    --io-backend) value "$@"; case "$2" in epoll|io-uring) io_backend=$2 ;;
      *) die "--io-backend must be epoll or io-uring, not '$2'" ;; esac; shift 2 ;;
    --apply-sysctl) sysctl_mode=apply; shift ;;
    --show-sysctl) sysctl_mode=only-show; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[ "$target" -gt 0 ] || die "--target must be above 0"
[ "$port" -gt 0 ] && [ "$port" -lt 65536 ] || die "--port must be 1 to 65535"

# Each line of sysctl.conf whose value differs from this machine's:
# "key: have → want". Reads /proc/sys only.
sysctl_changes() {
  local key want have path
  awk -F= '!/^[[:space:]]*(#|$)/ {
      k = $1; gsub(/^[ \t]+|[ \t]+$/, "", k)
      v = substr($0, index($0, "=") + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); gsub(/[ \t]+/, " ", v)
      print k "\t" v
    }' sysctl.conf |
  while IFS=$'\t' read -r key want; do
    path=/proc/sys/${key//.//}
    if [ -r "$path" ]; then
      have=$(tr -s ' \t' ' ' < "$path" | sed 's/ $//')
      [ "$have" = "$want" ] || echo "  $key: $have → $want"
    else
      echo "  $key: (not on this kernel) → $want"
    fi
  done
}
if [ "$sysctl_mode" = only-show ]; then
  changes=$(sysctl_changes)
  if [ -z "$changes" ]; then
    echo "sysctl.conf: this machine already has every value"
  else
    echo "sysctl.conf would change (bench/million.sh --apply-sysctl, as root):"
    echo "$changes"
  fi
  exit 0
fi

mkdir -p "$out"
log() { echo "million.sh: $*" >&2; }

if [ ! -x "$bin/wsgate" ] || [ ! -x "$bin/wsbench" ]; then
  log "building release binaries"
  cargo build --release --bin wsgate --bin wsbench
  bin=target/release
fi

# --- 1. the machine ----------------------------------------------------------
changes=$(sysctl_changes)
if [ "$sysctl_mode" = apply ]; then
  if [ -n "$changes" ]; then
    log "applying sysctl.conf (machine-wide, until reboot):"
    echo "$changes" >&2
  fi
  sysctl -e -q -p sysctl.conf || log "some sysctls could not be applied (not root?)"
elif [ -n "$changes" ]; then
  log "sysctl.conf is not applied; it would change (rerun with --apply-sysctl to apply):"
  echo "$changes" >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
bash tuning/tune.sh --target "$target" --both-ends || log "tune.sh reports shortfalls (above); going on with what this machine allows"

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
# Admin listeners go on 127.0.1.1, an address no connection here starts
# from: on 127.0.0.1 a server's port could already be the local end of an
# earlier server's Redis connection (this machine's automatic ports may span
# 1024-65535), and that server would fail to start.
admin_ip=127.0.1.1
for i in $(seq 0 $((procs - 1))); do
  "$bin/wsgate" --listen "127.0.0.1:$port" --workers "$workers" --io-backend "$io_backend" \
    --admin-listen "$admin_ip:$((9100 + i))" "${redis_args[@]}" \
    --ping-interval 600s --idle-timeout 900s --handshake-timeout 60s \
    --max-messages-per-sec 0 --max-handshakes-per-sec 0 --log-level warn $inbox_args &
  pids+=($!)
  server_pid_args+=(--server-pid $!)
done
for i in $(seq 0 $((procs - 1))); do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/$admin_ip/$((9100 + i))) 2>/dev/null && break
    sleep 0.1
  done
done
sleep 1
for pid in "${pids[@]}"; do
  # A server that could not start would leave the run short of capacity
  # and its figures wrong: stop here, with its error above.
  kill -0 "$pid" 2>/dev/null || die "a wsgate process (pid $pid) exited at start-up; see its error above"
done
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
  --broadcasts "$broadcasts" --broadcast-admin "$admin_ip:9100" \
  "${server_pid_args[@]}" --timeout 420 --out "$out/million.json" | tee "$out/million.md"
log "done in $(( $(date +%s) - started )) s; results in $out/million.json and $out/million.md"
{
  echo
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), RLIMIT_NOFILE $nofile"
  echo "servers: $procs wsgate process(es) × $workers worker(s) on one port, $io_backend loop$( [ "$procs" -gt 1 ] && echo ', linked by redis-server')"
  echo "command: bench/million.sh --target $target --hold $hold --broadcasts $broadcasts --io-backend $io_backend"
} | tee -a "$out/million.md"
"$bin/wsbench" report "$out/million.json" --out "$out" || log "no charts drawn"
