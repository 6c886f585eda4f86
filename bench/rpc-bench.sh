#!/usr/bin/env bash
# jsonrpcs benchmark: `core.version` over HTTP keep-alive (xhttp) and UDP
# datagrams, closed loop with N in flight (bench/load), bounded in requests
# and seconds, loopback only. Runs siphon (release) and, when installed,
# Kamailio's jsonrpcs + xhttp with the equivalent configuration in the same
# run; prints req/s, p50/p99 and the server's CPU seconds per 10k requests.
#
# Usage: bench/rpc-bench.sh [requests] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REQUESTS=${1:-100000}
INFLIGHT=${2:-8}
SECS=30
[ -x target/release/siphon ] && [ -x target/release/siphon-load ] || cargo build --release -p siphon -p siphon-load
SIPHON=target/release/siphon
LOAD=target/release/siphon-load
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

run() { # label mode target
  local t0 t1 line ok
  t0=$(cpu_ticks "$SERVER_PID")
  line=$("$LOAD" --label "$1" --inflight "$INFLIGHT" --requests "$REQUESTS" --seconds "$SECS" "$2" "$3" || true)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(echo "$line" | awk '{print $6}')
  awk -v l="$line" -v c=$((t1 - t0)) -v tk="$TICKS" -v ok="${ok:-0}" \
    'BEGIN { printf "%s  %7.3f CPU-s/10k\n", l, (ok > 0 ? c / tk / ok * 10000 : 0) }' | tee -a "$WORK/results"
}

echo "requests per run: $REQUESTS, in flight: $INFLIGHT"
"$SIPHON" -f bench/siphon-rpc.cfg > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
sleep 1
run siphon http http://127.0.0.1:5071/RPC
run siphon udp 127.0.0.1:5091
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

if command -v kamailio >/dev/null; then
  kamailio -f bench/kamailio-rpc.cfg -DD -E -m 256 -M 32 > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  sleep 2
  run kamailio http http://127.0.0.1:5081/RPC
  run kamailio udp 127.0.0.1:5092
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  echo
  echo "siphon / kamailio:"
  awk '{ k = $2; if ($1 == "siphon") { s[k] = $10; sc[k] = $18 } else { q[k] = $10; qc[k] = $18 } }
       END { for (x in s) if (x in q && q[x] > 0 && qc[x] > 0) printf "  %-5s %5.2fx req/s   %5.2fx CPU per request (lower is better)\n", x, s[x] / q[x], sc[x] / qc[x] }' "$WORK/results"
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi
