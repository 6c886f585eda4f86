"""A JSON-RPC client nobody here wrote (PyPI jsonrpcclient) against siphon's
jsonrpcs over HTTP (xhttp), with the standard library's HTTP client.
Usage: jsonrpcclient_http.py URL. Exits 0 when every check holds."""
import sys
import urllib.request

from jsonrpcclient import Error, Ok, notification_json, parse_json, request_json

url = sys.argv[1]


def post(doc):
    req = urllib.request.Request(
        url, data=doc.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read().decode()


def call(doc):
    status, body = post(doc)
    assert status == 200, status
    return parse_json(body)


r = call(request_json("core.version"))
assert isinstance(r, Ok) and r.result.startswith("siphon "), r
r = call(request_json("core.echo", params=["a", 2.5, None]))
assert isinstance(r, Ok) and r.result == ["a", 2.5, None], r
r = call(request_json("system.listMethods"))
assert isinstance(r, Ok) and "core.version" in r.result and "jsonrpc.echo" in r.result, r
r = call(request_json("no.such.method"))
assert isinstance(r, Error) and r.code == -32601, r
status, body = post(notification_json("core.echo", params=[1]))
assert status == 204 and body == "", (status, body)
print("ok")
