#!/usr/bin/env bash
# Registrar benchmark through Kamailio's own kamailio.cfg as shipped
# (/etc/kamailio/kamailio.cfg of the Debian package, default defines: no
# auth, usrloc in memory, record-route, acc log lines), on siphon (release
# build) and on Kamailio started the same way in the same run:
#   -f /etc/kamailio/kamailio.cfg -l udp:127.0.0.1:P -Y <private run dir>
# (Kamailio also -DD -E -m 1024 -M 32: usrloc and every transaction, kept
# for wt_timer after it completed, live in shared memory). Both log to
# stderr (-E) into a file at the file's own level, so the acc line per call
# costs both the same.
#   (a) REGISTER load: sipp bench/sipp/register_users.xml, REGS distinct
#       users (r1..rN from an -inf file), closed loop, bounded;
#   (b) calls between registered users: CALLEES users (c1..cM) registered
#       with the Contact of one sipp UAS (bench/sipp/uas_rr.xml), then sipp
#       bench/sipp/uac_call_users.xml calls sip:cX@127.0.0.1:P (X from an
#       -inf file), INVITE found by lookup, Record-Route, ACK, callee's BYE
#       along the route set; closed loop, bounded.
# Prints registrations/s, calls/s and each server's CPU seconds per 10k
# (user+system of the server and every process it forked, from /proc; on 2
# cores the sipps take much of the machine, so CPU per operation is the
# number to compare) and the siphon / Kamailio ratios. A server that does
# not start or completes nothing is reported as such; the other still runs.
#
# Usage: bench/registrar-bench.sh [registrations] [calls] [in-flight] [callees]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REGS=${1:-10000}
CALLS=${2:-5000}
INFLIGHT=${3:-50}
CALLEES=${4:-500}
MAXSECS=60
CFG=/etc/kamailio/kamailio.cfg
SIPHON=target/release/siphon
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install sip-tester)"; exit 1; }
[ -f "$CFG" ] || { echo "$CFG is not installed (apt-get install kamailio)"; exit 1; }
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
BENCH=$PWD/bench/sipp

# A free loopback UDP port.
free_udp() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Users PREFIX1..PREFIXn, one a line, read in order by sipp.
users() { # prefix n file
  { echo SEQUENTIAL; seq -f "$1%g" "$2"; } > "$3"
}
users r "$REGS" "$WORK/reg.csv"
users c "$CALLEES" "$WORK/callees.csv"
# The calls cycle through the callees.
users c "$CALLEES" "$WORK/calls.csv"

# The last cumulative value of sipp's counter $2 in output file $1.
counter() {
  grep "$2" "$1" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3 + 0}'
}

# sipp against the server ($SERVER_PID, named $1, on port $2) running the
# scenario and arguments that follow; appends "name what ok failed rate
# CPU-s/10k" to results when $3 (what) is not "-".
measure() { # name port what sipp-args...
  local name=$1 port=$2 what=$3 start end t0 t1 ok failed
  shift 3
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp "127.0.0.1:$port" -t u1 -i 127.0.0.1 \
      -r 1000000 -buff_size 8388608 -nostdin -timeout "${MAXSECS}s" "$@" \
      > "$WORK/$name.$what.sipp" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(counter "$WORK/$name.$what.sipp" "Successful call")
  failed=$(counter "$WORK/$name.$what.sipp" "Failed call")
  [ "$what" = "-" ] && { echo "  $name: $ok callees registered, $failed failed"; return; }
  awk -v n="$name" -v w="$what" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { d = b - a; printf "%-9s %-5s %8d ok %6d failed %8.0f %s/s  %7.3f CPU-s/10k\n", n, w, ok, f, ok / d, w, (ok > 0 ? c / tk / ok * 10000 : 0) }' |
    tee -a "$WORK/results"
  if [ "${ok:-0}" -eq 0 ]; then
    echo "    $name completed no $what; its log ends:"
    tail -3 "$WORK/$name.log" | sed 's/^/    /'
  fi
}

# Waits for the server to listen on $2, then runs (a) and (b) against it.
run_server() { # name port
  local i
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    ss -Hlun "sport = :$2" | grep -q . && break
    sleep 0.1
  done
  if ! kill -0 "$SERVER_PID" 2>/dev/null || ! ss -Hlun "sport = :$2" | grep -q .; then
    echo "$1: did not start:"
    grep -m 3 -i "error" "$WORK/$1.log" | sed 's/^/    /' || tail -3 "$WORK/$1.log"
    return
  fi
  sleep 1
  measure "$1" "$2" reg -sf "$BENCH/register_users.xml" -inf "$WORK/reg.csv" \
    -key contact 127.0.0.1:9 -key expires 3600 -m "$REGS" -l "$INFLIGHT"
  measure "$1" "$2" - -sf "$BENCH/register_users.xml" -inf "$WORK/callees.csv" \
    -key contact "127.0.0.1:$UAS_PORT" -key expires 3600 -m "$CALLEES" -l "$INFLIGHT"
  measure "$1" "$2" calls -sf "$BENCH/uac_call_users.xml" -inf "$WORK/calls.csv" \
    -m "$CALLS" -l "$INFLIGHT"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

UAS_PORT=$(free_udp)
echo "$CFG: registrations: $REGS, calls: $CALLS to $CALLEES registered users, in flight: $INFLIGHT ($(nproc) cores)"
echo "UAS: sipp bench/sipp/uas_rr.xml on 127.0.0.1:$UAS_PORT"
(cd "$WORK" && exec sipp -sf "$BENCH/uas_rr.xml" -i 127.0.0.1 -p "$UAS_PORT" -t u1 -buff_size 8388608 -nostdin > "$WORK/uas.out" 2>&1) &
: > "$WORK/results"

if [ -x "$SIPHON" ] || cargo build --release -p siphon; then
  PORT=$(free_udp)
  mkdir -p "$WORK/siphon.run"
  "$SIPHON" -f "$CFG" -l "udp:127.0.0.1:$PORT" -Y "$WORK/siphon.run" > "$WORK/siphon.log" 2>&1 &
  SERVER_PID=$!
  echo "siphon pid $SERVER_PID on 127.0.0.1:$PORT"
  run_server siphon "$PORT"
  stop_server
else
  echo "siphon: the release build failed"
fi

if command -v kamailio >/dev/null; then
  PORT=$(free_udp)
  mkdir -p "$WORK/kamailio.run"
  kamailio -f "$CFG" -DD -E -m 1024 -M 32 -l "udp:127.0.0.1:$PORT" -Y "$WORK/kamailio.run" > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  echo "kamailio pid $SERVER_PID on 127.0.0.1:$PORT ($(kamailio -v | head -1))"
  run_server kamailio "$PORT"
  stop_server
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi

echo "acc lines logged: siphon $(grep -c 'ACC: ' "$WORK/siphon.log" 2>/dev/null || echo 0), kamailio $(grep -c 'ACC: ' "$WORK/kamailio.log" 2>/dev/null || echo 0)"
awk '$3 > 0 { rate[$1 " " $2] = $7; cpu[$1 " " $2] = $9 }
     END { n = split("reg calls", ws, " ")
           for (i = 1; i <= n; i++) { w = ws[i]; s = "siphon " w; k = "kamailio " w
             if ((s in rate) && (k in rate) && cpu[k] > 0)
               printf "siphon / kamailio %-5s: %5.2fx %s/s   %5.2fx CPU per %s (lower is better)\n", w, rate[s] / rate[k], w, cpu[s] / cpu[k], (w == "reg" ? "registration" : "call")
             else printf "(no siphon / kamailio ratio for %s: both servers must complete some)\n", w } }' "$WORK/results"
