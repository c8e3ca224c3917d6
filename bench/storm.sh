#!/usr/bin/env bash
# A reconnect storm against --max-handshakes-per-sec auto (the default) and
# against 0 (no shedding), in one command:
#
#   bench/storm.sh [--out DIR] [--connections N] [--rounds R]
#
#   --out DIR          where results go (default target/bench/storm)
#   --connections N    resuming clients (default 10000)
#   --rounds R         alternating rounds of each setting (default 1)
#
# For each run: a fresh release wsgate --history-size 1000 on 127.0.0.1:8080
# (admin 127.0.0.1:9090, 2 workers), then `wsbench restart`: every client is
# dropped at 5 s and reconnects after a random 0..J ms, for J = 1000 (the
# scenario's default) and J = 0 (every client at once). After the run the
# server's wsgate_handshakes_shed_total and wsgate_handshake_rate_limit are
# read from /metrics. Writes DIR/<name>.json and DIR/<name>.md per run and
# DIR/summary.md. Everything stays on 127.0.0.0/8 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench/storm
connections=10000
rounds=1
die() { echo "storm.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    --connections) [ $# -ge 2 ] || die "--connections needs a value"; connections=$2; shift 2 ;;
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; rounds=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
done
mkdir -p "$out"
cargo build --release --bin wsgate --bin wsbench
bin=target/release
server=""
stop_server() {
  if [ -n "$server" ]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap stop_server EXIT
metric() {
  curl -s http://127.0.0.1:9090/metrics |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f", s }'
}
summary="$out/summary.md"
{
  echo "| run | limit | jitter ms | lost | duplicated | out of order | failed connects | shed (server) | limit/s (sum of workers, at end) | reconnection p50 / p99 ms | probe handshake in storm p99 ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} >"$summary"
for round in $(seq 1 "$rounds"); do
  for jitter in 1000 0; do
    if [ $((round % 2)) = 1 ]; then order="auto 0"; else order="0 auto"; fi
    for limit in $order; do
      name="restart-${connections}-j${jitter}-${limit/0/off}-r$round"
      "$bin/wsgate" --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --log-level warn \
        --workers 2 --history-size 1000 --max-handshakes-per-sec "$limit" &
      server=$!
      for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
        sleep 0.1
      done
      echo "storm.sh: $name" >&2
      "$bin/wsbench" restart --url ws://127.0.0.1:8080/ws --server-pid "$server" \
        --src-ips 127.0.0.2-127.0.0.41 --connections "$connections" --topics 20 --rate 100 \
        --duration 10 --at 5 --reconnect-jitter-ms "$jitter" --out "$out/$name.json" >"$out/$name.md"
      shed=$(metric wsgate_handshakes_shed_total)
      rate=$(metric wsgate_handshake_rate_limit)
      stop_server
      python3 - "$out/$name.json" "$name" "$limit" "$jitter" "$shed" "$rate" >>"$summary" <<'EOF'
import json, sys
path, name, limit, jitter, shed, rate = sys.argv[1:]
r = json.load(open(path))
r = r.get("restart", r)
def ms(lat, q):
    v = (lat or {}).get(q)
    return "–" if v is None else f"{v / 1000:.0f}"
rc, probe = r.get("reconnection"), r.get("unaffected_handshake_storm")
print(f"| {name} | {limit} | {jitter} | {r['lost']} | {r['duplicated']} | {r['out_of_order']} "
      f"| {r['failed_connects']} | {shed} | {rate} | {ms(rc, 'p50_us')} / {ms(rc, 'p99_us')} "
      f"| {ms(probe, 'p99_us')} |")
EOF
    done
  done
done
{
  echo
  echo "machine: $(nproc) cores, kernel $(uname -r); command: bench/storm.sh --out $out --connections $connections --rounds $rounds"
} >>"$summary"
cat "$summary"
