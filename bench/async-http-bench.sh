#!/usr/bin/env bash
# async_http benchmark: sipp INVITE -> http_async_get to an aiohttp app
# (bin/siphon/tests/interop/http_app.py) -> route -> 302 with the body as
# Contact -> ACK. Prints calls/s and CPU seconds per 10k calls of siphon and
# of the app. Kamailio's http_async_client is not in Debian's packages; when
# a kamailio with it is installed, kamailio-async-http.cfg runs the same
# scenario with its API in the same run.
#
# Usage: bench/async-http-bench.sh [calls] [in-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CALLS=${1:-20000}
INFLIGHT=${2:-100}
[ -x target/release/siphon ] || cargo build --release -p siphon
SIPHON=target/release/siphon
TICKS=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT

python3 bin/siphon/tests/interop/http_app.py 5302 > "$WORK/app.log" 2>&1 &
APP_PID=$!
sleep 1
echo "calls: $CALLS, in flight: $INFLIGHT"
"$SIPHON" -f bench/siphon-async-http.cfg > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
run_sipp_with_app siphon 5075
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
if command -v kamailio >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/http_async_client.so ]; then
  kamailio -f bench/kamailio-async-http.cfg -DD -E -m 256 -M 32 > "$WORK/kamailio.log" 2>&1 &
  SERVER_PID=$!
  run_sipp_with_app kamailio 5085
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
else
  echo "(kamailio's http_async_client is not installed: Debian does not ship it)"
fi
