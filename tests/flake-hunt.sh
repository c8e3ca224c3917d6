#!/usr/bin/env bash
# Reruns integration test files many times to catch flaky tests before they
# fail someone else's run. A test that passes once can still fail one run in
# ten (timing, ports, leftover processes); this finds it.
#
#   tests/flake-hunt.sh [--runs N] [--budget SECS] [--since REV] [TEST ...]
#
# TEST is an integration test file: `ops`, `tests/ops.rs`. With --since REV
# the files changed between REV and HEAD (tests/*.rs, not tests/common/) are
# added. Files are run round-robin, one `cargo test --test NAME` each, until
# every file has run N times or the time budget is spent. Prints one line per
# file with its failures; the log of each failed run stays in
# target/flake-hunt/. Exit status 0 when nothing failed, 1 when something
# did, 2 for a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "flake-hunt: $*" >&2; echo "try: tests/flake-hunt.sh --help" >&2; exit 2; }

runs=20 budget=0 since="" tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) [ $# -ge 2 ] || die "--runs needs a value"; runs=$2; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a value"; budget=$2; shift 2 ;;
    --since) [ $# -ge 2 ] || die "--since needs a value"; since=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) tests+=("$1"); shift ;;
  esac
done
case "$runs" in ''|*[!0-9]*|0) die "--runs must be a whole number above 0" ;; esac
case "$budget" in ''|*[!0-9]*) die "--budget must be whole seconds (0 = no limit)" ;; esac

if [ -n "$since" ]; then
  if ! git rev-parse --verify --quiet "$since^{commit}" >/dev/null; then
    # A short history (shallow clone, young repository): hunt in all of it.
    since=$(git rev-list --max-parents=0 HEAD | tail -n1)
    echo "flake-hunt: --since does not name a commit here; using the first commit $since" >&2
  fi
  # Test targets only: files directly in tests/ (helpers in tests/common/,
  # tests/support/ and the like are no target of their own).
  while IFS= read -r f; do
    case "$f" in tests/*/*) continue ;; esac
    [ -f "$f" ] && tests+=("$f")
  done < <(git diff --name-only "$since" HEAD -- 'tests/*.rs')
fi

# Normalise to test target names, without duplicates, each checked to exist.
names=()
for t in "${tests[@]}"; do
  n=$(basename "$t" .rs)
  [ -f "tests/$n.rs" ] || die "no integration test tests/$n.rs"
  case " ${names[*]} " in *" $n "*) ;; *) names+=("$n") ;; esac
done
if [ ${#names[@]} -eq 0 ]; then
  echo "flake-hunt: no test files to rerun"
  exit 0
fi

args=()
for n in "${names[@]}"; do args+=(--test "$n"); done
echo "flake-hunt: building ${names[*]}"
cargo test --locked --no-run "${args[@]}" >/dev/null 2>&1 || {
  cargo test --locked --no-run "${args[@]}"   # show why
  exit 1
}

logs=target/flake-hunt
mkdir -p "$logs"
declare -A ran failed
for n in "${names[@]}"; do ran[$n]=0; failed[$n]=0; done
start=$(date +%s)
out_of_time=0
for round in $(seq 1 "$runs"); do
  for n in "${names[@]}"; do
    if [ "$budget" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$budget" ]; then
      out_of_time=1
      break 2
    fi
    log="$logs/$n-run$round.log"
    if cargo test --locked --test "$n" >"$log" 2>&1; then
      rm -f "$log"
    else
      failed[$n]=$(( ${failed[$n]} + 1 ))
      echo "flake-hunt: $n failed on run $round (log: $log)"
      grep -E '^test .* FAILED$|panicked at' "$log" | head -n 5 | sed 's/^/    /' || true
    fi
    ran[$n]=$(( ${ran[$n]} + 1 ))
  done
done

total_failed=0
for n in "${names[@]}"; do
  echo "flake-hunt: $n: ${failed[$n]} failed of ${ran[$n]} runs"
  total_failed=$(( total_failed + ${failed[$n]} ))
done
[ "$out_of_time" = 0 ] || echo "flake-hunt: time budget of ${budget}s spent before $runs runs each"
[ "$total_failed" = 0 ]
