"""An application server nobody here wrote the protocol side of: JSON-RPC
handled by PyPI's jsonrpcserver, netstring framing by PyPI's pynetstring.

Usage: netstring_app.py PORT [CALLEE...]   (0: any; prints "port N"; a
CALLEE is a port, maybe with URI parameters: "5062;transport=tcp")
Methods: get_user(id) -> {"id": id, "name": "Petros"}; get_name(id) ->
"Petros"; fail() -> error {"code": 7, "message": "no such user"};
route(attempt) -> "sip:127.0.0.1:<the attempt-th CALLEE>" (a router: where
the call goes; printed as 'route {"attempt":N}'), error 404 past the last.
Notifications are printed as "notify <json>" (one line, flushed)."""
import asyncio
import json
import sys

import pynetstring
from jsonrpcserver import Error, Success, dispatch, method


@method
def get_user(id):
    return Success({"id": id, "name": "Petros"})


@method
def get_name(id):
    return Success("Petros")


@method
def fail(**kwargs):
    return Error(7, "no such user")


@method
def update_user(**kwargs):
    return Success(None)


@method
def route(attempt):
    print("route " + json.dumps({"attempt": attempt}, separators=(",", ":")), flush=True)
    callees = sys.argv[2:]
    if not 1 <= int(attempt) <= len(callees):
        return Error(404, "no callee for attempt %s" % attempt)
    return Success("sip:127.0.0.1:%s" % callees[int(attempt) - 1])


async def serve(reader, writer):
    decoder = pynetstring.Decoder()
    while True:
        data = await reader.read(65536)
        if not data:
            break
        for frame in decoder.feed(data):
            doc = json.loads(frame)
            if "id" not in doc:
                print("notify " + json.dumps(doc, separators=(",", ":")), flush=True)
            reply = dispatch(frame.decode())
            if reply:
                writer.write(pynetstring.encode(reply))
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    print("port %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
