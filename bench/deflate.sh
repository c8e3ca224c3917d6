#!/usr/bin/env bash
# permessage-deflate fan-out, with and without, in one run:
#
#   bench/deflate.sh [--out DIR] [--rounds N] [--listeners N]
#
# Starts one `wsgate --permessage-deflate` on 127.0.0.77:7781 (admin :7782)
# and runs `wsbench broadcast` of ~1 KB quote-like JSON to N subscribers
# (default 10,000), alternately with listeners that do not offer the
# extension and with listeners that do (`--deflate`), ROUNDS times each
# (default 6; the order alternates so drift does not favour one side).
# Writes DIR/r-{plain,deflate}-K.json and prints the server CPU per
# delivery and the bytes on the wire per delivery of each, with medians,
# and the server's compressor count (once per publish).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench/deflate rounds=6 listeners=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --listeners) listeners=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "deflate.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
cargo build --release --bin wsgate --bin wsbench
bin=target/release
"$bin/wsgate" --listen 127.0.0.77:7781 --admin-listen 127.0.0.77:7782 --log-level warn \
  --ping-interval 600s --idle-timeout 900s --max-handshakes-per-sec 0 --permessage-deflate &
srv=$!
trap 'kill -TERM $srv 2>/dev/null || true; wait $srv 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.77/7781) 2>/dev/null && break; sleep 0.1; done
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="plain deflate"; else order="deflate plain"; fi
  for mode in $order; do
    extra=()
    [ "$mode" = deflate ] && extra=(--deflate)
    echo "deflate.sh: round $round, $mode" >&2
    "$bin/wsbench" broadcast --listeners "$listeners" --messages 200 --rate 40 --mode publish \
      --payload-bytes 900 --realistic-payload --src-ips 127.0.0.2-127.0.0.9 "${extra[@]}" \
      --url ws://127.0.0.77:7781/ws --server-pid "$srv" --out "$out/r-$mode-$round.json" \
      >"$out/r-$mode-$round.md" 2>/dev/null
  done
done
curl -s 127.0.0.77:7782/metrics | grep -E '^wsgate_(deflate_compressions|deliveries)_total' || true
python3 - "$out" <<'PY'
import glob, json, statistics, sys
for mode in ("plain", "deflate"):
    runs = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/r-{mode}-*.json"))]
    cpu = [r["server_cpu_us_per_delivery"] for r in runs]
    wire = [r["wire_bytes_per_delivery"] for r in runs]
    print(f"{mode:8} server CPU µs/delivery {cpu} median {statistics.median(cpu):.2f}; "
          f"wire bytes/delivery median {statistics.median(wire):.0f}; "
          f"missing {sum(r['missing_deliveries'] for r in runs)}")
PY
