#!/usr/bin/env bash
# HTTP benchmark: Torsion (examples/http_hello), hyper 1.x current-thread
# (bench/hyper-hello) and a raw epoll loop (examples/raw_hello), each server
# pinned to CPU 0 and wrk to CPU 1, only on 127.0.0.1.
#   scripts/bench-http.sh [SECONDS] [all|hello|heads|static]
#   (default 5 s per run, all parts; ROUNDS=N rounds, default 5; needs wrk,
#   python3, taskset)
# Prints a Markdown table: requests/s and server CPU µs per request, without
# and with pipelining (depth 16), and RSS per idle keep-alive connection
# (10,000 connections). `heads` instead sends pipelined requests with a
# browser's head (eleven fields, about 430 bytes) and reports CPU per
# request only. The three servers run side by side and take turns,
# round after round: each figure is the median over the rounds, and each
# ratio the median of the rounds' ratios, so a slow moment of a shared
# machine lands on all three rather than on one. Then 1 MiB static-file
# throughput of `torsion web` (and nginx, when installed). Numbers, not
# assertions: compare ratios within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
part=${2:-all}
idle=${IDLE_CONNECTIONS:-10000}
rounds=${ROUNDS:-5}
target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
for tool in wrk python3 taskset; do
  command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$part" != static ]; then
  cargo build -q --release -p torsion-http --example http_hello --example raw_hello
  (cd bench/hyper-hello && CARGO_TARGET_DIR=$target/hyper-hello cargo build -q --release)
fi
[ "$part" = hello ] || cargo build -q --release -p torsion-cli

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/pipeline.lua" <<'EOF'
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, "/") end
  req = table.concat(r)
end
request = function() return req end
EOF

cat >"$work/heads.lua" <<'EOF'
init = function(args)
  local h = {}
  h["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
  h["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
  h["Accept-Language"] = "en-US,en;q=0.9"
  h["Accept-Encoding"] = "gzip, deflate, br"
  h["Connection"] = "keep-alive"
  h["Upgrade-Insecure-Requests"] = "1"
  h["Sec-Fetch-Dest"] = "document"
  h["Sec-Fetch-Mode"] = "navigate"
  h["Sec-Fetch-Site"] = "none"
  h["Cache-Control"] = "max-age=0"
  local r = {}
  for i = 1, 16 do r[i] = wrk.format("GET", "/index.html", h) end
  req = table.concat(r)
end
request = function() return req end
EOF

cat >"$work/idle.py" <<'EOF'
import socket, sys, time
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) * 1024
socks = []
for i in range(100):  # warm-up, not counted
    s = socket.create_connection(("127.0.0.1", port)); socks.append(s)
time.sleep(0.2)
before = rss()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
for s in socks[100:]:
    d = b""
    while not d.endswith(b"Hello, World!"):
        d += s.recv(4096)
time.sleep(0.5)
print((rss() - before) / n)
EOF

start() { # name cmd... ; prints "pid port"
  local log="$work/$1.log"; shift
  taskset -c 0 "$@" >"$log" 2>/dev/null &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do grep -q 'http://' "$log" && break; sleep 0.05; done
  local port
  port=$(grep -o 'http://[^/]*' "$log" | head -1 | sed 's/.*://')
  echo "$pid $port"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_wrk() { # pid port [script] ; prints "req_per_s us_per_req"
  local pid=$1 port=$2 script=${3:-}
  local args=(-t1 -c50 -d"${secs}s" --timeout 5s)
  [ -n "$script" ] && args+=(-s "$script")
  local t0 t1 out
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk "${args[@]}" "http://127.0.0.1:$port/")
  t1=$(cpu_ticks "$pid")
  local n rps
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local tck; tck=$(getconf CLK_TCK)
  python3 -c "print('%.0f %.2f' % ($rps, ($t1 - $t0) * 1e6 / $tck / max($n, 1)))"
}

if [ "$part" != static ]; then
declare -A PID PORT
for name in torsion hyper raw; do
  case $name in
    torsion) set -- $(start torsion "$target/release/examples/http_hello" 127.0.0.1:0) ;;
    hyper) set -- $(start hyper "$target/hyper-hello/release/hyper-hello" 127.0.0.1:0) ;;
    raw) set -- $(start raw "$target/release/examples/raw_hello" 127.0.0.1:0) ;;
  esac
  PID[$name]=$1 PORT[$name]=$2
done
# One line per run: "round server workload req_per_s us_per_req". Within
# a round the servers run the same workload back to back, and the order
# turns each round, so a slow spell of the machine does not always land on
# the same server.
for r in $(seq "$rounds"); do
  case $((r % 3)) in
    1) order="torsion raw hyper" ;;
    2) order="raw hyper torsion" ;;
    0) order="hyper torsion raw" ;;
  esac
  if [ "$part" = heads ]; then
    for name in $order; do
      echo "$r $name heads $(run_wrk "${PID[$name]}" "${PORT[$name]}" "$work/heads.lua")"
    done
    continue
  fi
  for name in $order; do
    echo "$r $name pipe $(run_wrk "${PID[$name]}" "${PORT[$name]}" "$work/pipeline.lua")"
  done
  for name in $order; do
    echo "$r $name plain $(run_wrk "${PID[$name]}" "${PORT[$name]}")"
  done
done >"$work/runs"
if [ "$part" = heads ]; then
  for name in torsion hyper raw; do
    kill "${PID[$name]}"; wait "${PID[$name]}" 2>/dev/null || true
  done
  python3 - "$work/runs" <<'EOF'
import sys, statistics as st
runs = [l.split() for l in open(sys.argv[1])]
def col(name, i):
    return [float(r[3 + i]) for r in runs if r[1] == name]
print(f"\n{len(col('raw', 0))} rounds of pipelined (16) requests with a browser's head; medians.\n")
print("| server | req/s | CPU µs/req |")
print("|---|---:|---:|")
for n in ("torsion", "hyper", "raw"):
    print(f"| {n} | {st.median(col(n, 0)):.0f} | {st.median(col(n, 1)):.2f} |")
def show(v):
    return f"{st.median(v):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in v)})"
r = lambda a, b: [x / y for x, y in zip(col(a, 1), col(b, 1))]
print(f"\nCPU per request, median of the rounds' ratios: torsion vs raw {show(r('torsion', 'raw'))}; "
      f"hyper vs raw {show(r('hyper', 'raw'))}; torsion vs hyper {show(r('torsion', 'hyper'))}")
EOF
  exit 0
fi
declare -A IDLE
for name in torsion hyper raw; do
  IDLE[$name]=$(python3 "$work/idle.py" "${PID[$name]}" "${PORT[$name]}" "$idle")
  kill "${PID[$name]}"; wait "${PID[$name]}" 2>/dev/null || true
done

python3 - "$work/runs" "${IDLE[torsion]}" "${IDLE[hyper]}" "${IDLE[raw]}" <<'EOF'
import sys, statistics as st
runs = [l.split() for l in open(sys.argv[1])]
idle = dict(zip(("torsion", "hyper", "raw"), map(float, sys.argv[2:5])))
def col(name, load, i):
    return [float(r[3 + i]) for r in runs if r[1] == name and r[2] == load]
rounds = len(col("raw", "pipe", 0))
print(f"\n{rounds} rounds; medians.\n")
print("| server | req/s | CPU µs/req | req/s pipelined (16) | CPU µs/req pipelined | RSS bytes per idle conn |")
print("|---|---:|---:|---:|---:|---:|")
for n in ("torsion", "hyper", "raw"):
    m = lambda load, i: st.median(col(n, load, i))
    print(f"| {n} | {m('plain', 0):.0f} | {m('plain', 1):.2f} | {m('pipe', 0):.0f} | {m('pipe', 1):.2f} | {idle[n]:.0f} |")
def ratios(n, load):
    return [a / b for a, b in zip(col(n, load, 1), col("raw", load, 1))]
def show(v):
    return f"{st.median(v):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in v)})"
print("\nCPU per request vs raw loop, median of the rounds' ratios:")
for load, what in (("plain", "without pipelining"), ("pipe", "pipelined")):
    print(f"- {what}: torsion {show(ratios('torsion', load))}; hyper {show(ratios('hyper', load))}")
# Torsion against hyper directly, each round's pair measured back to back.
print("\nCPU per request, torsion vs hyper, median of the rounds' ratios:")
for load, what in (("plain", "without pipelining"), ("pipe", "pipelined")):
    v = [a / b for a, b in zip(col("torsion", load, 1), col("hyper", load, 1))]
    print(f"- {what}: {show(v)}")
EOF

fi
[ "$part" = hello ] && exit 0

# Static 1 MiB file: throughput and server CPU per MiB sent, torsion web
# beside nginx (Debian nginx-light, sendfile on) when it is installed.
mkdir -p "$work/www"
head -c 1048576 /dev/urandom >"$work/www/1m.bin"
static_wrk() { # pid port ; prints "MiB/s server_cpu_ms_per_MiB client_cpu_ms_per_MiB"
  # With sendfile on loopback part of the delivery work is done in the
  # receiver's context, so the client's CPU is reported too.
  local pid=$1 port=$2 t0 t1 out
  t0=$(cpu_ticks "$pid")
  out=$( { TIMEFORMAT='%U %S'; time taskset -c 1 wrk -t1 -c10 -d"${secs}s" "http://127.0.0.1:$port/1m.bin"; } 2>&1)
  t1=$(cpu_ticks "$pid")
  local n; n=$(echo "$out" | awk '/requests in/ {print $1}')
  local client; client=$(echo "$out" | tail -1 | awk '{print $1 + $2}')
  local tck; tck=$(getconf CLK_TCK)
  python3 -c "print('%.0f %.3f %.3f' % ($n / $secs, ($t1 - $t0) * 1e3 / $tck / max($n, 1), $client * 1e3 / max($n, 1)))"
}
set -- $(start web "$target/release/torsion" web --listen tcp:0:interface=127.0.0.1 --path "$work/www")
got=$(python3 -c "import urllib.request; print(len(urllib.request.urlopen('http://127.0.0.1:$2/1m.bin').read()))" 2>&1 || true)
[ "$got" = 1048576 ] || { echo "torsion web did not serve the file: $got" >&2; exit 1; }
S_torsion=$(static_wrk "$1" "$2")
kill "$1"; wait "$1" 2>/dev/null || true
S_nginx=""
if command -v nginx >/dev/null; then
  nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/nginx"
  cat >"$work/nginx.conf" <<EOF
daemon off; master_process off; user root; pid $work/nginx.pid; error_log stderr crit;
events {}
http { access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
  server { listen 127.0.0.1:$nport; root $work/www; } }
EOF
  taskset -c 0 nginx -p "$work/nginx" -c "$work/nginx.conf" 2>/dev/null &
  npid=$!
  pids+=("$npid")
  for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $nport)).close()" 2>/dev/null && break; sleep 0.05; done
  got=$(python3 -c "import urllib.request; print(len(urllib.request.urlopen('http://127.0.0.1:$nport/1m.bin').read()))" 2>&1 || true)
  [ "$got" = 1048576 ] || { echo "nginx did not serve the file: $got" >&2; exit 1; }
  S_nginx=$(static_wrk "$npid" "$nport")
  kill "$npid"; wait "$npid" 2>/dev/null || true
fi
echo
echo "| static 1 MiB file, wrk -c10 | MiB/s | server CPU ms per MiB | wrk CPU ms per MiB |"
echo "|---|---:|---:|---:|"
echo "| torsion web | $(echo "$S_torsion" | awk '{print $1 " | " $2 " | " $3}') |"
if [ -n "$S_nginx" ]; then
  echo "| nginx (sendfile) | $(echo "$S_nginx" | awk '{print $1 " | " $2 " | " $3}') |"
fi
