#!/usr/bin/env bash
# evapi benchmark, siphon and (when installed) Kamailio's evapi in the same
# run, with siphon-load's evapi clients (bench/load):
#   burst:   one SIP request relays EVENTS events (a while loop) to 1 and 4 clients
#   per-req: sipp OPTIONS, each relaying one event to 1 client
#   async:   sipp INVITE -> evapi_async_relay -> the client answers with the
#            index/label -> t_continue -> 302 -> ACK
# Prints events/s at the clients (a burst is timed from the request that
# raises it to its last event), calls/s and the server's CPU seconds per
# 10k calls. Loopback only, bounded in events, calls and seconds.
#
# Usage: bench/evapi-bench.sh [burst-events] [calls]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
EVENTS=${1:-100000}
CALLS=${2:-20000}
[ -x target/release/siphon ] && [ -x target/release/siphon-load ] || cargo build --release -p siphon -p siphon-load
SIPHON=target/release/siphon
LOAD=target/release/siphon-load
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

config() { # sip-port evapi-port kamailio?
  echo '#!KAMAILIO'
  echo 'debug=0'
  echo 'log_stderror=yes'
  echo 'children=2'
  echo "listen=udp:127.0.0.1:$1"
  echo "max_while_loops=$((EVENTS + 1))"
  if [ "$3" = kamailio ]; then
    echo 'mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"'
    for m in sl tm tmx pv textops evapi; do echo "loadmodule \"$m.so\""; done
  else
    echo 'loadmodule "tm.so"'
    echo 'loadmodule "evapi.so"'
  fi
  echo "modparam(\"evapi\", \"bind_addr\", \"127.0.0.1:$2\")"
  cat <<'CFG'
event_route[evapi:message-received] {
	if ($(evapi(msg){s.select,0,|}) == "answer") {
		$var(idx) = $(evapi(msg){s.select,1,|}{s.int});
		$var(lbl) = $(evapi(msg){s.select,2,|}{s.int});
		t_continue("$var(idx)", "$var(lbl)", "ANSWER");
	}
}
request_route {
	if (is_method("ACK")) {
		exit;
	}
	if (is_method("MESSAGE")) {
		$var(i) = 0;
CFG
  echo "		while (\$var(i) < $EVENTS) { evapi_relay(\"burst \$var(i)\"); \$var(i) = \$var(i) + 1; }"
  cat <<'CFG'
		sl_send_reply("200", "OK");
		exit;
	}
	if (is_method("OPTIONS")) {
		evapi_relay("event $ci");
		sl_send_reply("200", "OK");
		exit;
	}
	evapi_async_relay("suspend|$T(id_index)|$T(id_label)");
	exit;
}
route[ANSWER] {
	append_to_reply("Contact: <sip:moved@127.0.0.1:5099>\r\n");
	t_reply("302", "Moved Temporarily");
}
CFG
}

sipp_run() { # name port scenario evport what
  local t0 t1 start end ok failed
  "$LOAD" --seconds 90 evapi "127.0.0.1:$4" --clients 1 $([ "$3" = invite302.xml ] && echo --answer) > "$WORK/clients.out" &
  local cl=$!
  sleep 0.5
  t0=$(cpu_ticks "$SERVER_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout 80 sipp -sf "$OLDPWD/bench/sipp/$3" "127.0.0.1:$2" -t u1 -i 127.0.0.1 -m "$CALLS" -l 200 -r 1000000 \
     -buff_size 8388608 -nostdin -timeout 60s > "$WORK/sipp.out" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID")
  kill "$cl" 2>/dev/null; wait "$cl" 2>/dev/null || true
  ok=$(grep "Successful call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v w="$5" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v tk="$TICKS" \
    'BEGIN { printf "%-9s %-8s %7d ok %5d failed %8.0f calls/s  %6.3f CPU-s/10k\n", n, w, ok, f, ok / (b - a), (ok > 0 ? c / tk / ok * 10000 : 0) }' | tee -a "$WORK/results"
}

bench() { # name sip-port evapi-port
  local n
  for n in 1 4; do
    "$LOAD" --seconds 30 evapi "127.0.0.1:$3" --clients "$n" --expect $((EVENTS * n)) --trigger "127.0.0.1:$2" > "$WORK/clients.out" || true
    echo "$1 burst    $(tail -1 "$WORK/clients.out")" | tee -a "$WORK/results"
  done
  sipp_run "$1" "$2" options.xml "$3" per-req
  sipp_run "$1" "$2" invite302.xml "$3" async
}

echo "burst: $EVENTS events per request; sipp: $CALLS calls, 200 in flight"
config 5074 8450 siphon > "$WORK/siphon.cfg"
"$SIPHON" -f "$WORK/siphon.cfg" > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
sleep 1
bench siphon 5074 8450
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

if command -v kamailio >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/evapi.so ]; then
  config 5084 8451 kamailio > "$WORK/kamailio.cfg"
  kamailio -f "$WORK/kamailio.cfg" -DD -E -m 512 -M 64 > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  sleep 2
  bench kamailio 5084 8451
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
else
  echo "(kamailio with evapi not installed: apt-get install kamailio kamailio-extra-modules)"
fi
