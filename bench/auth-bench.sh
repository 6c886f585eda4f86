#!/usr/bin/env bash
# Digest-authenticated registrations/s: bench/kamailio-auth.cfg (every
# REGISTER challenged with 401, then answered with credentials and saved in
# usrloc; nonce+nc replay protection on) run unchanged by siphon (release
# build) and by Kamailio in the same run, with sipp
# bench/sipp/register_auth.xml (REGISTER, 401, REGISTER with
# [authentication], 200: one "call" is one authenticated registration, two
# REGISTERs), closed loop, bounded. Prints registrations/s and each
# server's CPU seconds per 10k registrations (server and forked processes,
# from /proc), and the siphon / Kamailio ratios.
#
# Usage: bench/auth-bench.sh [registrations] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REGS=${1:-10000}
INFLIGHT=${2:-50}
MAXSECS=60
CFG=$PWD/bench/kamailio-auth.cfg
SIPHON=${SIPHON:-target/release/siphon}
command -v sipp >/dev/null || { echo "sipp is not installed (apt-get install sip-tester)"; exit 1; }
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
BENCH=$PWD/bench/sipp

free_udp() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
counter() {
  grep "$2" "$1" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3 + 0}'
}

run_server() { # name port
  local name=$1 port=$2 i start end t0 t1 ok failed
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    ss -Hlun "sport = :$port" | grep -q . && break
    sleep 0.1
  done
  if ! kill -0 "$SERVER_PID" 2>/dev/null || ! ss -Hlun "sport = :$port" | grep -q .; then
    echo "$name: did not start:"; tail -3 "$WORK/$name.log" | sed 's/^/    /'; return
  fi
  sleep 1
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout $((MAXSECS + 10)) sipp "127.0.0.1:$port" -t u1 -i 127.0.0.1 \
      -sf "$BENCH/register_auth.xml" -s alice -au alice -ap secret \
      -m "$REGS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin -timeout "${MAXSECS}s" \
      > "$WORK/$name.sipp" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  ok=$(counter "$WORK/$name.sipp" "Successful call")
  failed=$(counter "$WORK/$name.sipp" "Failed call")
  awk -v n="$name" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { d = b - a; printf "%-9s %8d ok %6d failed %8.0f reg/s  %7.3f CPU-s/10k\n", n, ok, f, ok / d, (ok > 0 ? c / tk / ok * 10000 : 0) }' |
    tee -a "$WORK/results"
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

echo "$CFG: $REGS authenticated registrations, in flight: $INFLIGHT ($(nproc) cores)"
: > "$WORK/results"
if [ -x "$SIPHON" ] || cargo build --release -p siphon; then
  PORT=$(free_udp)
  mkdir -p "$WORK/siphon.run"
  "$SIPHON" -f "$CFG" -l "udp:127.0.0.1:$PORT" -Y "$WORK/siphon.run" > "$WORK/siphon.log" 2>&1 &
  SERVER_PID=$!
  run_server siphon "$PORT"
  stop_server
fi
if command -v kamailio >/dev/null; then
  PORT=$(free_udp)
  mkdir -p "$WORK/kamailio.run"
  kamailio -f "$CFG" -DD -E -m 256 -M 32 -l "udp:127.0.0.1:$PORT" -Y "$WORK/kamailio.run" > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  run_server kamailio "$PORT"
  stop_server
else
  echo "(kamailio not installed: apt-get install kamailio for the comparison)"
fi
awk '{ rate[$1] = $6; cpu[$1] = $8 }
     END { if (("siphon" in rate) && ("kamailio" in rate) && cpu["kamailio"] > 0 && rate["kamailio"] > 0)
             printf "siphon / kamailio: %5.2fx reg/s   %5.2fx CPU per registration (lower is better)\n", rate["siphon"] / rate["kamailio"], cpu["siphon"] / cpu["kamailio"]
           else print "(no siphon / kamailio ratio: both servers must complete some)" }' "$WORK/results"
