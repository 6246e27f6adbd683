#!/usr/bin/env bash
# Takes screenshots of `torsion web`'s directory listing with headless
# Chromium (Debian `chromium`), over HTTP and over HTTPS (a throw-away
# self-signed certificate for 127.0.0.1, accepted with
# --ignore-certificate-errors): crates/torsion-http/docs/listing.png and
# listing-https.png.
# Usage: scripts/screenshot-listing.sh [DIR-TO-LIST]   (default: the repository's root,
# which has files, with their sizes and dates, as well as folders)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.}
docs=crates/torsion-http/docs
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "needs openssl" >&2; exit 1; }
cargo build -q -p torsion-cli
bin=${CARGO_TARGET_DIR:-target}/debug/torsion
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -INT $pid 2>/dev/null; rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
"$bin" web --path "$dir" \
  --listen tcp:0:interface=127.0.0.1 \
  --listen "ssl:0:interface=127.0.0.1:privateKey=$tmp/key.pem:certKey=$tmp/cert.pem" \
  >"$tmp/log" 2>/dev/null &
pid=$!
for _ in $(seq 50); do [ "$(grep -c :// "$tmp/log")" -ge 2 ] && break; sleep 0.1; done
chrome() { # ARGS... (a fresh profile each run)
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d -p "$tmp")" --ignore-certificate-errors "$@" 2>/dev/null
}
shot() { # URL OUT
  # The page must really be the listing (not an interstitial or error page):
  # headless screenshots show no address bar, so check the DOM too.
  chrome --dump-dom "$1" | grep -q '<title>Index of /' || { echo "no listing from $1" >&2; exit 1; }
  chrome --hide-scrollbars --window-size=1000,450 --screenshot="$2" "$1"
  [ -s "$2" ] || { echo "no screenshot from $1" >&2; exit 1; }
  echo "wrote $2 from $1"
}
shot "$(grep -o 'http://[^ ]*' "$tmp/log" | head -1)" "$docs/listing.png"
shot "$(grep -o 'https://[^ ]*' "$tmp/log" | head -1)" "$docs/listing-https.png"
