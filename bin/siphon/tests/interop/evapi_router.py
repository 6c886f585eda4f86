"""An evapi client that routes calls, netstrings by PyPI's pynetstring.

Usage: evapi_router.py EVAPI_PORT CALLEE...   (a CALLEE is a port, maybe
with URI parameters: "5062;transport=tcp")
Connects to siphon's evapi socket on 127.0.0.1:EVAPI_PORT, prints
"port EVAPI_PORT" once connected and sends "hello". For every event
"route|INDEX|LABEL|ATTEMPT" (a suspended call asking where to go) it prints
"route {"attempt":ATTEMPT}" and answers
"answer|INDEX|LABEL|sip:127.0.0.1:<the ATTEMPT-th CALLEE>" ("none"
past the last), which the config hands to t_continue."""
import json
import socket
import sys

import pynetstring

port = int(sys.argv[1])
callees = sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port))
print("port %d" % port, flush=True)
s.sendall(pynetstring.encode("hello"))
decoder = pynetstring.Decoder()
while True:
    data = s.recv(65536)
    if not data:
        break
    for frame in decoder.feed(data):
        parts = frame.decode().split("|")
        if parts[0] != "route" or len(parts) != 4:
            continue
        attempt = int(parts[3])
        print("route " + json.dumps({"attempt": attempt}, separators=(",", ":")), flush=True)
        dest = "sip:127.0.0.1:%s" % callees[attempt - 1] if 1 <= attempt <= len(callees) else "none"
        s.sendall(pynetstring.encode("answer|%s|%s|%s" % (parts[1], parts[2], dest)))
