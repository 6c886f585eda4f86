#!/usr/bin/env bash
# SIP core benchmark: sipp drives the server at a fixed number of calls in
# flight, for a bounded number of calls and seconds, on loopback only.
#   OPTIONS -> 200                      (stateless, sl_send_reply)
#   INVITE -> t_newtran + t_reply 302 -> ACK   (stateful)
# It runs siphon (release build) and, when installed, Kamailio with the
# equivalent configuration in the same run, and prints calls/s and the
# server's CPU seconds per 10k calls (from /proc/PID/stat; on 2 cores one sipp
# saturates first, so CPU per call is the number to compare).
#
# Usage: bench/sip-bench.sh [calls-per-scenario] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${1:-100000}
INFLIGHT=${2:-200}
MAXSECS=60
SIPHON=target/release/siphon
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install sip-tester)"; exit 1; }
[ -x "$SIPHON" ] || cargo build --release -p siphon
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

run_sipp() { # name port scenario transport
  local start end t0 t1 ok failed
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp -sf "$OLDPWD/bench/sipp/$3" "127.0.0.1:$2" -t "$4" -i 127.0.0.1 \
      -m "$CALLS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin -timeout "${MAXSECS}s" > "$WORK/sipp.out" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(grep "Successful call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v s="$3/$4" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { w = b - a; cps = ok / w; cpu = c / tk; printf "%-9s %-18s %8d ok %4d failed %9.0f calls/s  %7.3f CPU-s/10k calls\n", n, s, ok, f, cps, (ok > 0 ? cpu / ok * 10000 : 0) }' | tee -a "$WORK/results"
}

bench_server() { # name port
  sleep 1
  run_sipp "$1" "$2" options.xml u1
  run_sipp "$1" "$2" invite302.xml u1
  run_sipp "$1" "$2" invite302.xml t1
}

echo "calls per scenario: $CALLS, in flight: $INFLIGHT"
"$SIPHON" -f bench/siphon-redirect.cfg -l udp:127.0.0.1:5070 -l tcp:127.0.0.1:5070 > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
echo "siphon pid $SERVER_PID ($(nproc) cores, children = cores)"
bench_server siphon 5070
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

if command -v kamailio >/dev/null; then
  kamailio -f bench/kamailio-redirect.cfg -DD -E -m 256 -M 32 > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  echo "kamailio pid $SERVER_PID ($(kamailio -v | head -1))"
  bench_server kamailio 5080
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  echo
  echo "siphon / kamailio (calls/s ratio, CPU per call ratio):"
  awk '{ key = $2; if ($1 == "siphon") { s[key] = $7; sc[key] = $9 } else { k[key] = $7; kc[key] = $9 } }
       END { for (x in s) if (x in k && k[x] > 0 && kc[x] > 0) printf "  %-18s %5.2fx calls/s   %5.2fx CPU per call (lower is better)\n", x, s[x] / k[x], sc[x] / kc[x] }' "$WORK/results"
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi
