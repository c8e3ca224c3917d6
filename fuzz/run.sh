#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) from the seed
# corpus in fuzz/corpus/<target>/, and exits non-zero if any target crashes
# (the crashing input is saved under fuzz/artifacts/<target>/).
#
# The committed corpus stays as it is: each run works on a copy in a
# temporary directory (set FUZZ_KEEP_CORPUS=DIR to keep the grown copies).
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(handshake frame_header message deflate)

if ! command -v c++ >/dev/null; then
  # libfuzzer-sys compiles libFuzzer (C++) in its build script.
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Build every target first, so a compile error shows as one (and the timed
# runs below measure fuzzing only).
cargo fuzz build

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  cp fuzz/corpus/"$t"/* "$work/$t"/
  echo "fuzz: $t for ${seconds}s" >&2
  log="$work/$t.log"
  if cargo fuzz run "$t" "$work/$t" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t ok: ${execs:-?} execs, ${rate:-?} execs/s, ${cov:-cov: ?}, corpus $(ls "$work/$t" | wc -l) inputs" >&2
  else
    tail -60 "$log" >&2
    echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t/)" >&2
    failed+=("$t")
  fi
  if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
    mkdir -p "$FUZZ_KEEP_CORPUS/$t"
    cp "$work/$t"/* "$FUZZ_KEEP_CORPUS/$t"/
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a crash" >&2
