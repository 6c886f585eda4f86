#!/usr/bin/env bash
# event_jsonrpc benchmark: one SIP request raises a burst of events (a
# while loop of raise_event) to 1 and 4 subscribers (siphon-load sink on
# 127.0.0.1:5101…), as notifications and in sync_mode (each answered); prints
# events/s delivered (first to last document at the subscribers) and what the
# server counted. Loopback only, bounded in events and seconds.
#
# Usage: bench/event-bench.sh [events-per-burst]
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000}
[ -x target/release/siphon ] && [ -x target/release/siphon-load ] || cargo build --release -p siphon -p siphon-load
SIPHON=target/release/siphon
LOAD=target/release/siphon-load
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

run() { # subscribers sync(0/1)
  local subs=$1 sync=$2 i
  {
    echo "debug=0"
    echo "children=2"
    echo "listen=udp:127.0.0.1:5072"
    echo "max_while_loops=$((EVENTS + 1))"
    echo 'loadmodule "event_jsonrpc.so"'
    echo 'loadmodule "jsonrpcs.so"'
    echo "modparam(\"event_jsonrpc\", \"sync_mode\", $sync)"
    echo 'modparam("event_jsonrpc", "timeout", 5000)'
    echo 'modparam("jsonrpcs", "transport", 4)'
    echo 'modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:5093")'
    echo 'startup_route {'
    for i in $(seq 1 "$subs"); do echo "  subscribe_event(\"E_BURST\", \"jsonrpc:127.0.0.1:$((5100 + i))\");"; done
    echo '}'
    echo 'request_route {'
    echo '  $var(i) = 0;'
    echo "  while (\$var(i) < $EVENTS) { \$avp(n) := \"seq\"; \$avp(v) := \$var(i); raise_event(\"E_BURST\", \$avp(v), \$avp(n)); \$var(i) = \$var(i) + 1; }"
    echo '  sl_send_reply("200", "OK");'
    echo '}'
  } > "$WORK/ev.cfg"
  local reply=""
  [ "$sync" = 1 ] && reply="--reply"
  "$LOAD" --seconds 30 sink 5101 --subscribers "$subs" --expect $((EVENTS * subs)) $reply > "$WORK/sink.out" &
  local sink=$!
  sleep 0.3
  "$SIPHON" -f "$WORK/ev.cfg" > "$WORK/siphon.log" 2>&1 &
  local srv=$!
  sleep 1
  # One datagram (bash's /dev/udp would split it).
  python3 -c 'import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(("MESSAGE sip:bench@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKev%s\r\nFrom: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:bench@127.0.0.1>\r\nCall-ID: ev%s\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % (sys.argv[1], sys.argv[1])).encode(), ("127.0.0.1", 5072))' "$subs$sync"
  wait "$sink" || true
  echo "$(cat "$WORK/sink.out" | tail -1)   server: $("$SIPHON" ctl --udp 127.0.0.1:5093 stats.get_statistics event_jsonrpc: | tr -d '\n ",[]' | sed 's/event_jsonrpc:/ /g')"
  kill "$srv"; wait "$srv" 2>/dev/null || true
}

echo "events per burst: $EVENTS (one SIP request raises them)"
run 1 0
run 4 0
run 1 1
run 4 1
