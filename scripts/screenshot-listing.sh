#!/usr/bin/env bash
# Takes a screenshot of `torsion web`'s directory listing with headless
# Chromium (Debian `chromium`): crates/torsion-http/docs/listing.png.
# Usage: scripts/screenshot-listing.sh [DIR-TO-LIST]   (default: the repo's crates/)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-crates}
out=crates/torsion-http/docs/listing.png
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
cargo build -q -p torsion-cli
bin=${CARGO_TARGET_DIR:-target}/debug/torsion
log=$(mktemp)
"$bin" web --listen tcp:0:interface=127.0.0.1 --path "$dir" >"$log" 2>/dev/null &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q http:// "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[^ ]*' "$log" | head -1)
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1000,380 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out from $url"
