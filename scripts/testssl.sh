#!/usr/bin/env bash
# Runs testssl.sh (Debian package testssl.sh, command `testssl`) against the
# Torsion TLS echo server example and fails on any HIGH or CRITICAL finding.
# Usage: scripts/testssl.sh [extra testssl options]
# Output: the findings summary on stdout; full JSON in $OUT (default target/testssl.json).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v testssl >/dev/null || { echo "testssl not installed (apt-get install testssl.sh)" >&2; exit 2; }
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/testssl.json}
mkdir -p "$(dirname "$OUT")"
cargo build -q -p torsion-tls --example tls_echo_server
BIN=${CARGO_TARGET_DIR:-target}/debug/examples/tls_echo_server
LOG=$(mktemp)
CA=$(mktemp --suffix=.pem)
TORSION_TLS_CA_OUT="$CA" RUST_LOG=error "$BIN" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG" "$CA"' EXIT
ADDR=""
for _ in $(seq 1 100); do
  ADDR=$(sed -n 's/^listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$LOG")
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start:"; cat "$LOG"; exit 1; }
rm -f "$OUT"
# --warnings batch: no questions. --add-ca: trust the example's throw-away CA.
testssl --quiet --color 0 --warnings batch --add-ca "$CA" --jsonfile "$OUT" "$@" "$ADDR" >/dev/null || true
python3 - "$OUT" <<'PY'
import json, sys, collections
findings = json.load(open(sys.argv[1]))
count = collections.Counter(f.get("severity", "?") for f in findings)
print("testssl.sh findings by severity:", dict(sorted(count.items())))
bad = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL")]
for f in findings:
    if f.get("severity") in ("MEDIUM", "LOW", "HIGH", "CRITICAL"):
        print(f'{f["severity"]:8} {f["id"]}: {f["finding"]}')
sys.exit(1 if bad else 0)
PY
