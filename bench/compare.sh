#!/usr/bin/env bash
# Servers side by side in one run: interleaved rounds, medians per figure.
#
#   bench/compare.sh --server NAME=COMMAND [--server NAME=COMMAND ...]
#                    [--rounds N] [--connections N] [--listeners N]
#                    [--out DIR]
#
#   --server NAME=COMMAND  a server to measure; COMMAND is run by bash with
#                          {port} replaced by the port it must listen on
#                          (127.0.0.1). The first server is the baseline
#                          every ratio is against. Give two or more.
#   --rounds N             interleaved rounds (default 3): each round runs
#                          every scenario on every server, in turn
#   --connections N        idle connections for the connect scenario
#                          (default 10000)
#   --listeners N          receivers for the broadcast scenario (default 5000)
#   --out DIR              where the per-run JSON and the table go
#                          (default target/bench/compare)
#   --port N               the port every server listens on (default 18611);
#                          give another one when a second comparison may run
#                          on the machine: servers bound with SO_REUSEPORT
#                          would silently share one port and split the load
#   --perf                 also profile every server in every run (perf
#                          record -g, 999 Hz) and split its CPU: the share
#                          spent delivering its own sends into the client's
#                          socket (the softirq half of loopback, under
#                          net_rx_action: the peer's TCP receive and its
#                          wake-up, which a real network runs on the
#                          client's host) and the share in user space. The
#                          table gets each per-operation figure without
#                          that delivery. Needs perf; sampling costs the
#                          servers a few percent each, alike.
#
# Scenarios, each against a freshly started server:
#   connect    N idle connections: server bytes per connection, server CPU
#              per handshake, handshakes/s
#   echo       100 connections in closed loop for 5 s: server CPU per round trip
#   broadcast  L listeners, one client sending {"type":"broadcast"} with one
#              message in flight: server CPU per delivery
# Every server must speak wsgate's echo and broadcast JSON shapes (wsgate
# with --app pubsub --client-broadcast on --max-broadcasts-per-sec 0 does;
# so does the uWebSockets peer in ../shared/peers/uwebsockets).
#
# This machine is shared and noisy: a single run swings by tens of percent,
# so only the medians of interleaved rounds and their ratios are worth
# quoting. Example, the release build against the one at another revision:
#
#   git worktree add /tmp/old REV && (cd /tmp/old && cargo build --release)
#   bench/compare.sh \
#     --server "old=/tmp/old/target/release/wsgate --listen 127.0.0.1:{port} --workers 1 --log-level warn" \
#     --server "new=target/release/wsgate --listen 127.0.0.1:{port} --workers 1 --log-level warn"
#
# ({port}-only commands get no admin listener; wsgate's admin default is
# harmless here.) Everything stays on 127.0.0.0/8, is bounded in time and
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
port=18611
connections=10000
listeners=5000
out=target/bench/compare
perf=0
names=()
commands=()
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "compare.sh: $*" >&2; echo "try: bench/compare.sh --help" >&2; exit 2; }
number() { case "$2" in ''|*[!0-9]*|0) die "$1 must be a whole number above 0, not '$2'" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --server)
      [ $# -ge 2 ] || die "--server needs NAME=COMMAND"
      case "$2" in *=*) ;; *) die "--server needs NAME=COMMAND, not '$2'" ;; esac
      names+=("${2%%=*}"); commands+=("${2#*=}"); shift 2 ;;
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; number --rounds "$2"; rounds=$2; shift 2 ;;
    --connections) [ $# -ge 2 ] || die "--connections needs a value"; number --connections "$2"; connections=$2; shift 2 ;;
    --listeners) [ $# -ge 2 ] || die "--listeners needs a value"; number --listeners "$2"; listeners=$2; shift 2 ;;
    --port) [ $# -ge 2 ] || die "--port needs a value"; number --port "$2"; port=$2; shift 2 ;;
    --out) [ $# -ge 2 ] && [ -n "$2" ] || die "--out needs a value"; out=$2; shift 2 ;;
    --perf) perf=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
[ "${#names[@]}" -ge 2 ] || die "give at least two --server NAME=COMMAND"
if [ "$perf" = 1 ]; then
  command -v perf >/dev/null || die "--perf needs perf (apt-get install linux-perf)"
fi
mkdir -p "$out"
cargo build --release --bin wsbench
wsbench=target/release/wsbench
log() { echo "compare.sh: $*" >&2; }

server=
stop_server() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
trap stop_server EXIT
start_server() {
  local cmd=${1//\{port\}/$port}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "something already listens on port $port (another comparison?); try --port"
    exit 1
  fi
  bash -c "exec $cmd" >"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  log "server did not start: $cmd (see $out/server.log)"
  exit 1
}
bench() {
  local file=$1 recorder=
  shift
  if [ "$perf" = 1 ]; then
    perf record -q -g -F 999 -p "$server" -o "${file%.json}.perf" >/dev/null 2>&1 &
    recorder=$!
  fi
  "$wsbench" "$@" --url "ws://127.0.0.1:$port/ws" --server-pid "$server" --out "$file" >/dev/null
  if [ -n "$recorder" ]; then
    kill -INT "$recorder" 2>/dev/null || true
    wait "$recorder" 2>/dev/null || true
    split "${file%.json}.perf" >"${file%.json}.split.json"
    rm -f "${file%.json}.perf" "${file%.json}.perf.old"
  fi
}
# The CPU split of one profile, as JSON: the share of samples under
# net_rx_action (loopback delivery into the peer's socket) and in user space.
# (`|| true`: awk stops reading at its line, and perf's broken pipe must not
# end the script.)
split() {
  local rx kernel
  rx=$(perf report -i "$1" --children --sort sym --stdio 2>/dev/null |
    awk '$3 == "[k]" && $4 == "net_rx_action" { sub(/%/, "", $1); print $1; exit }' || true)
  kernel=$(perf report -i "$1" --no-children --sort dso --stdio 2>/dev/null |
    awk '$2 == "[kernel.kallsyms]" { sub(/%/, "", $1); print $1; exit }' || true)
  echo "{\"loopback_delivery_share\": $(awk -v v="${rx:-0}" 'BEGIN { print v / 100 }'), \"user_share\": $(awk -v v="${kernel:-100}" 'BEGIN { print 1 - v / 100 }')}"
}

for round in $(seq 1 "$rounds"); do
  for i in "${!names[@]}"; do
    name=${names[$i]}
    log "round $round/$rounds: $name"
    start_server "${commands[$i]}"
    bench "$out/$name-connect-$round.json" connect --connections "$connections" --hold 1 --settle 2 \
      --src-ips 127.0.0.2-127.0.0.9
    stop_server
    start_server "${commands[$i]}"
    bench "$out/$name-echo-$round.json" echo --connections 100 --duration 5
    stop_server
    start_server "${commands[$i]}"
    bench "$out/$name-broadcast-$round.json" broadcast --listeners "$listeners" --messages 200 \
      --mode broadcast --src-ips 127.0.0.2-127.0.0.9
    stop_server
  done
done

python3 - "$out" "$rounds" "${names[@]}" <<'EOF' | tee "$out/compare.md"
import json, statistics, sys
out, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
figures = [
    ("connect", "server_bytes_per_conn", "idle B/conn"),
    ("connect", "server_cpu_us_per_handshake", "server µs/handshake"),
    ("connect", "handshakes_per_sec", "handshakes/s"),
    ("echo", "server_cpu_us_per_round_trip", "server µs/echo round trip"),
    ("broadcast", "server_cpu_us_per_delivery", "server µs/broadcast delivery"),
]
def load(name, scenario, r, suffix=""):
    try:
        return json.load(open(f"{out}/{name}-{scenario}-{r}{suffix}.json"))
    except FileNotFoundError:
        return {}
def value(name, scenario, r, key, split):
    v = load(name, scenario, r).get(key)
    if v is None or split is None:
        return v
    s = load(name, scenario, r, ".split").get(split)
    if s is None:
        return None
    # Without the loopback delivery: the figure times the share left; the
    # user share as a percentage.
    return float(v) * (1 - s) if split == "loopback_delivery_share" else 100 * s
def median(name, scenario, key, split=None):
    values = []
    for r in range(1, rounds + 1):
        v = value(name, scenario, r, key, split)
        if v is not None:
            values.append(float(v))
    return statistics.median(values) if values else None
if any(load(n, "echo", 1, ".split") for n in names):
    per_op = [f for f in figures if "µs" in f[2]]
    figures += [(s, k, l + " without loopback delivery", "loopback_delivery_share") for s, k, l in per_op]
    figures += [(s, k, l.replace("server µs/", "% user space, "), "user_share") for s, k, l in per_op]
print(f"Medians of {rounds} interleaved rounds; ratio against {names[0]}.\n")
print("| figure | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for scenario, key, label, *split in figures:
    split = split[0] if split else None
    base = median(names[0], scenario, key, split)
    cells = []
    for name in names:
        m = median(name, scenario, key, split)
        if m is None:
            cells.append("–")
        elif name == names[0] or not base:
            cells.append(f"{m:.2f}")
        else:
            cells.append(f"{m:.2f} ({m / base:.2f}×)")
    print(f"| {label} | " + " | ".join(cells) + " |")
EOF
log "done: $out/compare.md"
