#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each under
# libFuzzer with AddressSanitizer, on the machine's stable toolchain:
# RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z sanitizer flags cargo-fuzz
# passes, so no nightly toolchain is needed.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default 60 s, all targets)
# Corpora grow under fuzz/corpus/ and crashes land in fuzz/artifacts/ (both
# ignored by git). Exits non-zero on the first target that finds a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
  echo "== $t (${secs}s)"
  log=$(mktemp)
  rc=0
  cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=4096 >"$log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY|Test unit written)' "$log" || tail -5 "$log"
  rm -f "$log"
  [ "$rc" -eq 0 ] || { echo "!! $t failed (rc $rc; see fuzz/artifacts/$t)"; exit 1; }
done
