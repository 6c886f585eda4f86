#!/usr/bin/env bash
# Dispatcher benchmark: sipp bench/sipp/uac_invite_bye.xml -> proxy
# (ds_select_dst round robin, algorithm 4, over three destinations; t_relay)
# -> three sipp built-in UAS on loopback ports, INVITE/100/180/200/ACK/BYE/
# 200 over UDP, the ACK and BYE following the callee's Contact through the
# proxy; closed loop (a fixed number of calls in flight), bounded in calls
# and seconds. The same configuration (bench/dispatcher.cfg) on siphon
# (release build) and Kamailio in the same run, against the same UAS;
# prints calls/s, the proxy's CPU seconds per 10k calls (user+system of
# the server and every process it forked, from /proc; on 2 cores the four
# sipps take most of the machine, so CPU per call is the number to compare),
# how the calls spread over the three UAS, and the siphon / Kamailio ratios.
# A server that does not start or completes no call is reported as such,
# and the other one still runs. Kamailio gets 1 GB of shared memory: every
# transaction lives on for wt_timer (5 s) after it completed.
#
# Usage: bench/dispatcher-bench.sh [calls] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${1:-10000}
INFLIGHT=${2:-100}
MAXSECS=60
SIPHON=target/release/siphon
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install sip-tester)"; exit 1; }
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Free loopback UDP ports (others may run benchmarks on the usual ones).
free_udp() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
UAS_PORTS="$(free_udp) $(free_udp) $(free_udp)"
SIPHON_PORT=$(free_udp)
KAMAILIO_PORT=$(free_udp)
for p in $UAS_PORTS; do echo "1 sip:127.0.0.1:$p"; done > "$WORK/dispatcher.list"

# The UAS, fresh for each server so their counters split that server's
# calls; a port taken meanwhile is reported.
start_uas() {
  UAS_PIDS=""
  for p in $UAS_PORTS; do
    (cd "$WORK" && exec sipp -sn uas -i 127.0.0.1 -p "$p" -t u1 -buff_size 8388608 -nostdin \
        -trace_stat -stf "uas-$p.csv" -fd 1 > "$WORK/uas-$p.out" 2>&1) &
    UAS_PIDS="$UAS_PIDS $!"
  done
  sleep 0.5
  for p in $UAS_PORTS; do
    if grep -aq "Unable to bind" "$WORK/uas-$p.out" 2>/dev/null; then
      echo "    the UAS port $p was taken: its share of the calls fails"
    fi
  done
}

# Calls each UAS took (IncomingCall(C), the cumulative count, on the last
# line of its statistics file, written every second), as "a/b/c".
stop_uas() {
  local p n out=""
  sleep 2
  kill $UAS_PIDS 2>/dev/null || true
  wait $UAS_PIDS 2>/dev/null || true
  for p in $UAS_PORTS; do
    n=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "IncomingCall(C)") c = i }
                   END { if (c) print $c + 0 }' "$WORK/uas-$p.csv" 2>/dev/null)
    out="$out${out:+/}${n:-?}"
  done
  echo "$out"
}

# The server ($SERVER_PID, named $1) listening on 127.0.0.1:$2: waits for the
# port, runs the calls, appends "name ok failed calls/s CPU-s/10k" to results.
run_proxy() { # name port
  local start end t0 t1 ok failed
  wait_server "$1" "$2" || return
  sleep 1
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp -sf "$OLDPWD/bench/sipp/uac_invite_bye.xml" "127.0.0.1:$2" \
      -t u1 -i 127.0.0.1 -m "$CALLS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin \
      -timeout "${MAXSECS}s" > "$WORK/$1.sipp" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(grep "Successful call" "$WORK/$1.sipp" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/$1.sipp" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { w = b - a; printf "%-9s %8d ok %6d failed %8.0f calls/s  %7.3f CPU-s/10k calls", n, ok, f, ok / w, (ok > 0 ? c / tk / ok * 10000 : 0) }' |
    tee -a "$WORK/results"
  if [ "${ok:-0}" -eq 0 ]; then
    echo
    echo "    $1 completed no call; its log ends:"
    tail -3 "$WORK/$1.log" | sed 's/^/    /'
  fi
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# One server: UAS up, the calls, the split, everything down.
bench_one() { # name port command...
  local name=$1 port=$2 split
  shift 2
  start_uas
  "$@" > "$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  run_proxy "$name" "$port"
  stop_server
  split=$(stop_uas)
  echo "  per UAS $split" | tee -a "$WORK/results"
}

echo "calls: $CALLS, in flight: $INFLIGHT, round robin over sipp -sn uas on 127.0.0.1:{${UAS_PORTS// /,}} ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
: > "$WORK/results"
LIST="\"$WORK/dispatcher.list\""

if [ -x "$SIPHON" ] || cargo build --release -p siphon; then
  echo "siphon ($SIPHON)"
  bench_one siphon "$SIPHON_PORT" "$SIPHON" -f bench/dispatcher.cfg \
    -A "PROXY_PORT=$SIPHON_PORT" -A "DS_LIST=$LIST"
else
  echo "siphon: the release build failed"
fi

if command -v kamailio >/dev/null; then
  echo "kamailio ($(kamailio -v | head -1))"
  bench_one kamailio "$KAMAILIO_PORT" kamailio -f bench/dispatcher.cfg -DD -E -m 1024 -M 32 \
    -A "PROXY_PORT=$KAMAILIO_PORT" -A "DS_LIST=$LIST"
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi

awk '$1 == "siphon" && $2 > 0 { s = $6; sc = $8 } $1 == "kamailio" && $2 > 0 { k = $6; kc = $8 }
     END { if (s && k && kc > 0) printf "\nsiphon / kamailio: %5.2fx calls/s   %5.2fx CPU per call (lower is better)\n", s / k, sc / kc
           else print "\n(no siphon / kamailio ratio: both servers must complete calls)" }' "$WORK/results"
