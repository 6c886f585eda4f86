#!/usr/bin/env bash
# jsonrpcc benchmark: sipp INVITE -> jsonrpc_request to a Python netstring
# JSON-RPC app (bin/siphon/tests/interop/netstring_app.py: jsonrpcserver +
# pynetstring, the same app for both servers) -> route[RESPONSE] -> 302 ->
# ACK. siphon, and Kamailio's jsonrpcc when installed, in the same run;
# prints calls/s and the SIP server's CPU seconds per 10k calls (the app
# is part of the measured system and usually the bottleneck).
#
# Usage: bench/jsonrpcc-bench.sh [calls] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-20000}
INFLIGHT=${2:-100}
MAXSECS=60
[ -x target/release/siphon ] || cargo build --release -p siphon
SIPHON=target/release/siphon
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

cpu_ticks() {
  local total=0 pid
  for pid in $1 $(pgrep -P "$1" || true); do
    [ -r /proc/$pid/stat ] && total=$((total + $(awk '{print $14 + $15}' /proc/$pid/stat)))
  done
  echo $total
}

run() { # name port
  local start end t0 t1 a0 a1 ok failed
  sleep 1
  t0=$(cpu_ticks "$SERVER_PID"); a0=$(cpu_ticks "$APP_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp -sf "$OLDPWD/bench/sipp/invite302.xml" "127.0.0.1:$2" -t u1 -i 127.0.0.1 \
      -m "$CALLS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin -timeout "${MAXSECS}s" > "$WORK/sipp.out" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID"); a1=$(cpu_ticks "$APP_PID")
  ok=$(grep "Successful call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v app=$((a1 - a0)) -v tk="$TICKS" \
    'BEGIN { w = b - a; printf "%-9s %8d ok %5d failed %8.0f calls/s  server %6.3f CPU-s/10k  app %6.3f CPU-s/10k\n", n, ok, f, ok / w, (ok > 0 ? c / tk / ok * 10000 : 0), (ok > 0 ? app / tk / ok * 10000 : 0) }' | tee -a "$WORK/results"
}

python3 bin/siphon/tests/interop/netstring_app.py 5301 > "$WORK/app.log" 2>&1 &
APP_PID=$!
sleep 1
echo "calls: $CALLS, in flight: $INFLIGHT"
"$SIPHON" -f bench/siphon-jsonrpcc.cfg > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
run siphon 5073
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

if command -v kamailio >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/jsonrpcc.so ]; then
  kamailio -f bench/kamailio-jsonrpcc.cfg -DD -E -m 256 -M 32 > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  run kamailio 5083
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  awk '{ if ($1 == "siphon") { s = $6; sc = $9 } else { k = $6; kc = $9 } }
       END { if (k > 0 && kc > 0) printf "siphon / kamailio: %.2fx calls/s, %.2fx server CPU per call (lower is better)\n", s / k, sc / kc }' "$WORK/results"
else
  echo "(kamailio with jsonrpcc not installed: apt-get install kamailio kamailio-json-modules)"
fi
