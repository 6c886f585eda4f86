"""A JSON-RPC client nobody here wrote (PyPI jsonrpcclient) against siphon's
jsonrpcs over UDP. Usage: jsonrpcclient_udp.py HOST:PORT. Exits 0 when every
check holds; prints what failed otherwise."""
import json
import socket
import sys

from jsonrpcclient import Error, Ok, notification_json, parse_json, request_json

host, port = sys.argv[1].rsplit(":", 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
addr = (host, int(port))


def call(doc):
    sock.sendto(doc.encode(), addr)
    data, _ = sock.recvfrom(70000)
    return parse_json(data.decode())


r = call(request_json("core.version"))
assert isinstance(r, Ok) and r.result.startswith("siphon "), r
r = call(request_json("core.echo", params=["a", 2, {"k": [1, 2]}]))
assert isinstance(r, Ok) and r.result == ["a", 2, {"k": [1, 2]}], r
r = call(request_json("stats.get_statistics", params=["all"]))
assert isinstance(r, Ok) and any(x.startswith("core:rcv_requests = ") for x in r.result), r
r = call(request_json("no.such.method"))
assert isinstance(r, Error) and r.code == -32601, r
r = call(request_json("system.methodHelp", params=["core.uptime"]))
assert isinstance(r, Ok) and "seconds" in r.result, r
# A notification gets no reply.
sock.sendto(notification_json("core.echo", params=[1]).encode(), addr)
sock.settimeout(0.3)
try:
    sock.recvfrom(70000)
    raise AssertionError("a notification was answered")
except socket.timeout:
    pass
print("ok")
