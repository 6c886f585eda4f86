#!/usr/bin/env bash
# Stateful proxy benchmark: sipp's built-in uac -> proxy (t_relay) -> sipp's
# built-in uas, INVITE/100/180/200/ACK/BYE/200 over UDP on loopback, closed
# loop (a fixed number of calls in flight), bounded in calls and seconds.
# The same routing on siphon (bench/siphon-proxy.cfg, release build) and on
# Kamailio (bench/kamailio-proxy.cfg) in the same run, against the same UAS;
# prints calls/s and the proxy's CPU seconds per 10k calls (user+system of
# the server and every process it forked, from /proc; on 2 cores the two
# sipps take most of the machine, so CPU per call is the number to compare)
# and the siphon / Kamailio ratios. A server that does not start or
# completes no call is reported as such, and the other one still runs.
# A few failed calls are normal: a proxy with several UDP workers may relay
# the UAS's 180 after its 200, and the built-in uac takes a late 180 as an
# unexpected message. Kamailio gets 1 GB of shared memory: every transaction
# lives on for wt_timer (5 s) after it completed.
#
# With a third argument, each server first completes that many calls
# unmeasured and idles 6 s (past wt_timer, 5 s, on both), so the measured
# calls run on memory the server already has (steady state); without it the
# measured calls include the first touch of that memory (page faults).
#
# Usage: bench/proxy-bench.sh [calls] [in-flight] [warm-up calls]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${1:-20000}
INFLIGHT=${2:-100}
WARMUP=${3:-0}
MAXSECS=60
UAS_PORT=5095
SIPHON=target/release/siphon
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install sip-tester)"; exit 1; }
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# The server ($SERVER_PID, named $1) listening on 127.0.0.1:$2: waits for the
# port, runs the calls, appends "name ok failed calls/s CPU-s/10k" to results.
run_proxy() { # name port
  local start end t0 t1 ok failed
  wait_server "$1" "$2" || return
  sleep 1
  if [ "$WARMUP" -gt 0 ]; then
    (cd "$WORK" && timeout $((MAXSECS + 10)) sipp -sn uac "127.0.0.1:$2" -t u1 -i 127.0.0.1 \
        -m "$WARMUP" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin \
        -timeout "${MAXSECS}s" > "$WORK/$1.warmup" 2>&1) || true
    sleep 6
  fi
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp -sn uac "127.0.0.1:$2" -t u1 -i 127.0.0.1 \
      -m "$CALLS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin \
      -timeout "${MAXSECS}s" > "$WORK/$1.sipp" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(grep "Successful call" "$WORK/$1.sipp" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/$1.sipp" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { w = b - a; printf "%-9s %8d ok %6d failed %8.0f calls/s  %7.3f CPU-s/10k calls\n", n, ok, f, ok / w, (ok > 0 ? c / tk / ok * 10000 : 0) }' |
    tee -a "$WORK/results"
  if [ "${ok:-0}" -eq 0 ]; then
    echo "    $1 completed no call; its log ends:"
    tail -3 "$WORK/$1.log" | sed 's/^/    /'
  fi
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

echo "calls: $CALLS (after $WARMUP unmeasured), in flight: $INFLIGHT, UAS: sipp -sn uas on 127.0.0.1:$UAS_PORT ($(nproc) cores)"
# A UAS of an earlier run may still be going away: wait for its port.
for i in $(seq 50); do
  ss -Hlun "sport = :$UAS_PORT" | grep -q . || break
  sleep 0.1
done
(cd "$WORK" && exec sipp -sn uas -i 127.0.0.1 -p "$UAS_PORT" -t u1 -buff_size 8388608 -nostdin > "$WORK/uas.out" 2>&1) &
UAS_PID=$!
sleep 0.5
kill -0 "$UAS_PID" 2>/dev/null || { echo "the UAS did not start:"; tail -5 "$WORK/uas.out"; exit 1; }
: > "$WORK/results"

if [ -x "$SIPHON" ] || cargo build --release -p siphon; then
  "$SIPHON" -f bench/siphon-proxy.cfg -A UAS_PORT=$UAS_PORT > "$WORK/siphon.log" 2>&1 &
  SERVER_PID=$!
  echo "siphon pid $SERVER_PID"
  run_proxy siphon 5077
  stop_server
else
  echo "siphon: the release build failed"
fi

if command -v kamailio >/dev/null; then
  kamailio -f bench/kamailio-proxy.cfg -DD -E -m 1024 -M 32 -A UAS_PORT=$UAS_PORT > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  echo "kamailio pid $SERVER_PID ($(kamailio -v | head -1))"
  run_proxy kamailio 5087
  stop_server
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi
kill "$UAS_PID" 2>/dev/null || true

awk '$1 == "siphon" && $2 > 0 { s = $6; sc = $8 } $1 == "kamailio" && $2 > 0 { k = $6; kc = $8 }
     END { if (s && k && kc > 0) printf "\nsiphon / kamailio: %5.2fx calls/s   %5.2fx CPU per call (lower is better)\n", s / k, sc / kc
           else print "\n(no siphon / kamailio ratio: both servers must complete calls)" }' "$WORK/results"
