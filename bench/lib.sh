# Shared by the bench/*.sh scripts (sourced, not run).

# A process and all its descendants, one pid a line (Kamailio's main process
# forks its workers, and a worker may fork again).
proc_tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" || true); do
    proc_tree "$child"
  done
}

# CPU ticks (user+system, all threads) of a process and its descendants.
cpu_ticks() {
  local total=0 pid stat
  for pid in $(proc_tree "$1"); do
    # A process may end between the listing and the read: it counts 0.
    stat=$(cat /proc/$pid/stat 2>/dev/null) || continue
    # utime and stime are fields 14 and 15, 12 and 13 after the ") " that
    # closes the command name (which may hold spaces).
    total=$((total + $(echo "${stat##*) }" | awk '{print $12 + $13}')))
  done
  echo $total
}

# sipp INVITE -> 302 against NAME on PORT, with an application server
# (APP_PID) in the loop: calls/s and CPU seconds per 10k calls of the SIP
# server (SERVER_PID) and of the app. Uses CALLS, INFLIGHT, WORK, TICKS.
run_sipp_with_app() { # name port
  local start end t0 t1 a0 a1 ok failed
  sleep 1
  t0=$(cpu_ticks "$SERVER_PID"); a0=$(cpu_ticks "$APP_PID")
  start=$(date +%s.%N)
  (cd "$WORK" && timeout 80 sipp -sf "$OLDPWD/bench/sipp/invite302.xml" "127.0.0.1:$2" -t u1 -i 127.0.0.1 \
      -m "$CALLS" -l "$INFLIGHT" -r 1000000 -buff_size 8388608 -nostdin -timeout 60s > "$WORK/sipp.out" 2>&1) || true
  end=$(date +%s.%N)
  t1=$(cpu_ticks "$SERVER_PID"); a1=$(cpu_ticks "$APP_PID")
  ok=$(grep "Successful call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$WORK/sipp.out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  awk -v n="$1" -v ok="${ok:-0}" -v f="${failed:-0}" -v a="$start" -v b="$end" -v c=$((t1 - t0)) -v app=$((a1 - a0)) -v tk="$TICKS" \
    'BEGIN { w = b - a; printf "%-9s %8d ok %5d failed %8.0f calls/s  server %6.3f CPU-s/10k  app %6.3f CPU-s/10k\n", n, ok, f, ok / w, (ok > 0 ? c / tk / ok * 10000 : 0), (ok > 0 ? app / tk / ok * 10000 : 0) }' | tee -a "$WORK/results"
}

# Waits until $SERVER_PID (named $1, logging to $WORK/$1.log) listens on UDP
# port $2; fails, printing why, when the server ended first.
wait_server() { # name port
  local i
  for i in $(seq 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    ss -Hlun "sport = :$2" | grep -q . && break
    sleep 0.1
  done
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$1: did not start:"
    grep -m 3 -i "error" "$WORK/$1.log" | sed 's/^/    /' || tail -3 "$WORK/$1.log"
    return 1
  fi
}
