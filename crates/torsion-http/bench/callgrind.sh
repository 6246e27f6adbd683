#!/usr/bin/env bash
# User-mode instructions per request, counted by callgrind (noise-free on a
# shared machine, unlike CPU time): runs a release server example under
# valgrind, sends ROUNDS rounds of DEPTH pipelined `GET /` on each of 8
# connections (each round waits for all answers), once with 50 and once with
# 250 rounds, and prints the difference per request (start-up and shutdown
# cancel out).
#   crates/torsion-http/bench/callgrind.sh [http_hello|raw_hello] [DEPTH]
# HEAD=browser sends a browser's eleven-field head (as `bench-http.sh
# heads` does) instead of `GET /` with Host alone.
# Needs valgrind and python3. Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../../.."
example=${1:-http_hello}
depth=${2:-16}
target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build -q --release -p torsion-http --example "$example"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/drive.py" <<'PY'
import socket, sys
port, conns, rounds, depth = map(int, sys.argv[1:5])
if sys.argv[5] == "browser":
    one = (b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
           + b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n"
           + b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
           + b"Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
           + b"Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\n"
           + b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: none\r\n"
           + b"Cache-Control: max-age=0\r\n\r\n")
else:
    one = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
req = one * depth
socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
for _ in range(rounds):
    for s in socks:
        s.sendall(req)
    for s in socks:
        buf = b""
        while buf.count(b"Hello, World!") < depth:
            d = s.recv(65536)
            if not d:
                raise SystemExit("connection closed")
            buf += d
for s in socks:
    s.close()
PY
count() { # rounds -> total instructions
  local out="$work/cg.$1" log="$work/log.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$target/release/examples/$example" 127.0.0.1:0 >"$log" 2>/dev/null &
  local pid=$!
  for _ in $(seq 300); do grep -qs 'http://' "$log" && break; sleep 0.1; done
  local port
  port=$(grep -o 'http://[^/]*' "$log" | head -1 | sed 's/.*://')
  python3 "$work/drive.py" "$port" 8 "$1" "$depth" "${HEAD:-plain}"
  sleep 0.3
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
a=$(count 50)
b=$(count 250)
python3 -c "print('$example, depth $depth: %.0f instructions per request' % (($b - $a) / (200 * 8 * $depth)))"
