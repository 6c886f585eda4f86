"""An event subscriber nobody here wrote the protocol side of: PyPI's
jsonrpcserver answers the JSON-RPC requests (sync_mode) that siphon's
event_jsonrpc sends; the documents arrive back to back on one TCP connection
(no framing), split here with the standard json decoder.

Usage: jsonrpc_subscriber.py PORT [reply|silent|error]
Listens on 127.0.0.1:PORT (0: any; prints "port N"), prints every document
received as "recv <json>" (one line, flushed). Requests (non-null id) are
answered through jsonrpcserver.dispatch (result 8, as the seed's example) in
mode "reply", with an error in mode "error", never in mode "silent"."""
import asyncio
import json
import sys

from jsonrpcserver import Error, Success, dispatch

port = int(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "reply"
decoder = json.JSONDecoder()


def handler(*args, **kwargs):
    if mode == "error":
        return Error(1, "refused")
    return Success(8)


async def serve(reader, writer):
    buf = ""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data.decode()
        while True:
            stripped = buf.lstrip()
            if not stripped:
                buf = ""
                break
            try:
                doc, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                buf = stripped
                break
            buf = stripped[end:]
            print("recv " + json.dumps(doc, separators=(",", ":")), flush=True)
            if doc.get("id") is not None and mode != "silent":
                reply = dispatch(json.dumps(doc), methods={doc["method"]: handler})
                writer.write(reply.encode())
                await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print("port %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
