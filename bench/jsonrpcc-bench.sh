#!/usr/bin/env bash
# jsonrpcc and janssonrpcc benchmark: sipp INVITE -> jsonrpc_request (and
# janssonrpc_request) to a Python netstring
# JSON-RPC app (bin/siphon/tests/interop/netstring_app.py: jsonrpcserver +
# pynetstring, the same app for both servers) -> route[RESPONSE] -> 302 ->
# ACK. siphon, and Kamailio's jsonrpcc when installed, in the same run;
# prints calls/s and the SIP server's CPU seconds per 10k calls (the app
# is part of the measured system and usually the bottleneck).
#
# Usage: bench/jsonrpcc-bench.sh [calls] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${1:-20000}
INFLIGHT=${2:-100}
MAXSECS=60
[ -x target/release/siphon ] || cargo build --release -p siphon
SIPHON=target/release/siphon
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

python3 bin/siphon/tests/interop/netstring_app.py 5301 > "$WORK/app.log" 2>&1 &
APP_PID=$!
sleep 1
echo "calls: $CALLS, in flight: $INFLIGHT"
for api in jsonrpcc janssonrpcc; do
  case $api in jsonrpcc) sport=5073; kport=5083 ;; *) sport=5076; kport=5086 ;; esac
  : > "$WORK/results"
  echo "== $api"
  "$SIPHON" -f "bench/siphon-$api.cfg" > "$WORK/siphon.log" 2>&1 &
  SERVER_PID=$!
  run_sipp_with_app siphon $sport
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  if command -v kamailio >/dev/null && [ -e "/usr/lib/x86_64-linux-gnu/kamailio/modules/$api.so" ]; then
    kamailio -f "bench/kamailio-$api.cfg" -DD -E -m 256 -M 32 > "$WORK/kamailio.log" 2>&1 &
    SERVER_PID=$!
    run_sipp_with_app kamailio $kport
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    awk '{ if ($1 == "siphon") { s = $6; sc = $9 } else { k = $6; kc = $9 } }
         END { if (k > 0 && kc > 0) printf "siphon / kamailio: %.2fx calls/s, %.2fx server CPU per call (lower is better)\n", s / k, sc / kc }' "$WORK/results"
  else
    echo "(kamailio with $api not installed: apt-get install kamailio kamailio-json-modules)"
  fi
done
