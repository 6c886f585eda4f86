#!/usr/bin/env bash
# evapi burst without loss: one SIP MESSAGE whose route relays EVENTS small
# JSON events (about 64 bytes each) in one run, to 4 clients that read at
# different speeds:
#   fast     reads as fast as it can
#   slow     reads 4 KiB then sleeps 10 ms (about 10x slower than fast)
#   paused   reads nothing for 2 s, then as fast as it can
#   never    never reads (cut after send_data_timeout, its queue counted)
# Prints, per client, the events delivered and the events siphon counted as
# dropped (evapi.clients while connected, the disconnect log line after),
# how long the route run held its SIP worker, and the server's peak RSS.
# Loopback only; bounded in events (EVENTS) and seconds (60 per client).
#
# Usage: bench/evapi-burst.sh [events]   (SIPHON=path to use another binary,
#        CHILDREN=1 for one SIP worker, which the route run holds throughout)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-200000}
SIPHON=${SIPHON:-target/release/siphon}
[ -x "$SIPHON" ] || cargo build --release -p siphon
WORK=$(mktemp -d); echo "work: $WORK" >&2
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"; kill $(jobs -p) 2>/dev/null || true' EXIT
SIP=5076 EV=8452 RPC=8453

cat > "$WORK/siphon.cfg" <<CFG
debug=2
log_stderror=yes
children=${CHILDREN:-2}
listen=udp:127.0.0.1:$SIP
max_while_loops=$((EVENTS + 1))
loadmodule "evapi.so"
loadmodule "jsonrpcs.so"
modparam("evapi", "bind_addr", "127.0.0.1:$EV")
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:$RPC")
request_route {
	if (is_method("MESSAGE")) {
		\$var(i) = 0;
		xlog("L_INFO", "burst start\n");
		while (\$var(i) < $EVENTS) {
			evapi_relay("{\"event\":\"burst\",\"i\":\$var(i),\"call\":\"a84b4c76e66710@pc33\"}");
			\$var(i) = \$var(i) + 1;
		}
		xlog("L_INFO", "burst end\n");
	}
	sl_send_reply("200", "OK");
}
CFG
"$SIPHON" -f "$WORK/siphon.cfg" > "$WORK/siphon.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do grep -q "evapi listening" "$WORK/siphon.log" && break; sleep 0.1; done

python3 - "$EV" "$SIP" "$RPC" "$EVENTS" "$SERVER_PID" "$WORK/siphon.log" <<'PY'
import json, re, socket, sys, threading, time
ev, sip, rpc, events, pid, log = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
got, first = {}, {}
def netstrings(buf):
    n, at = 0, 0
    while True:
        c = buf.find(b":", at)
        if c < 0: break
        end = c + 1 + int(buf[at:c])
        if end >= len(buf): break
        n, at = n + 1, end + 1
    return n, buf[at:]
def reader(name, sock, chunk, pause_each, pause_first):
    got[name] = 0
    if pause_first is None:
        return
    time.sleep(pause_first)
    sock.settimeout(10)
    buf, deadline = b"", time.time() + 60
    while got[name] < events and time.time() < deadline:
        try:
            d = sock.recv(chunk)
        except socket.timeout:
            break
        if not d: break
        n, buf = netstrings(buf + d)
        if n and name not in first: first[name] = time.time()
        got[name] += n
        if pause_each: time.sleep(pause_each)
kinds = [("fast", 1 << 16, 0, 0), ("slow", 4096, 0.01, 0), ("paused", 1 << 16, 0, 2.0), ("never", 0, 0, None)]
socks = {k[0]: socket.create_connection(("127.0.0.1", ev)) for k in kinds}
def clients():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b'{"jsonrpc":"2.0","method":"evapi.clients","id":1}', ("127.0.0.1", rpc))
    return {c["srcport"]: c for c in json.loads(s.recv(1 << 20))["result"]}
while len(clients()) < 4: time.sleep(0.05)
port = {k: s.getsockname()[1] for k, s in socks.items()}
threads = [threading.Thread(target=reader, args=(k, socks[k], c, p, f)) for k, c, p, f in kinds]
for t in threads: t.start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(60); u.bind(("127.0.0.1", 0))
t0 = time.time()
u.sendto(("MESSAGE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKburst\r\n" % u.getsockname()[1] +
          "From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: burst\r\nCSeq: 1 MESSAGE\r\n"
          "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", sip))
u.recv(65536)
route = time.time() - t0
dropped, last = {}, {}
while any(t.is_alive() for t in threads):
    for p, c in clients().items():
        last[p] = c
    time.sleep(0.2)
time.sleep(6)  # the never-reading client's send_data_timeout (5 s) passes
for p, c in clients().items():
    last[p] = c
text = open(log).read()
gone = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"\(127\.0\.0\.1:(\d+)\) gone: \d+ events sent, (\d+) dropped", text)}
stalled = {int(m.group(1)) for m in re.finditer(r"\(127\.0\.0\.1:(\d+)\) took no data", text)}
over = {int(m.group(1)) for m in re.finditer(r"\(127\.0\.0\.1:(\d+)\) does not read", text)}
rss = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0]
print(f"burst of {events} events from one route run: the route ran {route:.3f} s (its reply after the last relay)")
if "fast" in first:
    print(f"  the fast client's first event arrived {first['fast'] - t0:.3f} s after the request (writers run while the route does)")
for k, *_ in kinds:
    p = port[k]
    d = gone.get(p, last.get(p, {}).get("dropped", 0))
    state = ("disconnected (send_data_timeout)" if p in stalled else "disconnected (max_queue_bytes)" if p in over
             else "connected" if p in clients() else "gone")
    print(f"  {k:7s} delivered {got[k]:7d}  dropped {d:7d}  {state}")
print(f"  server peak RSS {int(rss) // 1024} MiB")
PY
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
