"""An HTTP application nobody here wrote the server of: PyPI's aiohttp.

Usage: http_app.py PORT [CERT KEY] [--callees C1,C2...]   (0: any; prints
"port N"; with a certificate and key it serves HTTPS; a callee is a port,
maybe with URI parameters: "5062;transport=tcp")
  GET  /route?attempt=N -> 200 "sip:127.0.0.1:<the N-th callee>" (a
                          router: where the call goes; printed as
                          "route {"attempt":N}"), 404 past the last
  GET  /user?r_uri=U   -> 200 "sip:U@127.0.0.1:5099", header X-App: aiohttp
  POST /echo           -> 201 with the request body, method in X-Method
  any  /echo           -> 200 with method, body and X-Test header
  GET  /missing        -> 404 "no such thing"
  GET  /fail           -> 500 "broken"
  GET  /big/N[?chunked=1] -> 200 with N bytes "x" in 64 KiB writes
                          (Content-Length announced, or chunked)
  any  /ctype          -> 200 with the request's Content-Type ("-": none)
  GET  /gather/N      -> holds every request until N are held, then
                          answers them all 200 "gathered N"
"""
import asyncio
import ssl
import sys

from aiohttp import web

callees = []
if "--callees" in sys.argv:
    i = sys.argv.index("--callees")
    callees = sys.argv[i + 1].split(",")
    del sys.argv[i:i + 2]


async def user(request):
    return web.Response(text="sip:%s@127.0.0.1:5099" % request.query.get("r_uri", ""),
                        headers={"X-App": "aiohttp"})


async def echo(request):
    body = await request.text()
    status = 201 if request.method == "POST" else 200
    return web.Response(status=status,
                        text="%s %s %s" % (request.method, body, request.headers.get("X-Test", "-")),
                        headers={"X-Method": request.method})


async def route(request):
    attempt = int(request.query.get("attempt", "0"))
    print('route {"attempt":%d}' % attempt, flush=True)
    if not 1 <= attempt <= len(callees):
        return web.Response(status=404, text="no callee for attempt %d" % attempt)
    return web.Response(text="sip:127.0.0.1:%s" % callees[attempt - 1])


async def missing(request):
    return web.Response(status=404, text="no such thing")


async def fail(request):
    return web.Response(status=500, text="broken")


async def big(request):
    n = int(request.match_info["n"])
    resp = web.StreamResponse()
    if request.query.get("chunked"):
        resp.enable_chunked_encoding()
    else:
        resp.content_length = n
    await resp.prepare(request)
    chunk = b"x" * 65536
    try:
        while n > 0:
            await resp.write(chunk[:min(n, len(chunk))])
            n -= len(chunk)
        await resp.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client stopped reading: that is the point
    return resp


async def ctype(request):
    await request.read()
    return web.Response(text=request.headers.get("Content-Type", "-"))


held = []


async def gather(request):
    n = int(request.match_info["n"])
    ev = asyncio.Event()
    held.append(ev)
    if len(held) >= n:
        for e in held:
            e.set()
        held.clear()
    await ev.wait()
    return web.Response(text="gathered %d" % n)


app = web.Application()
app.router.add_get("/big/{n}", big)
app.router.add_route("*", "/ctype", ctype)
app.router.add_get("/gather/{n}", gather)
app.router.add_get("/user", user)
app.router.add_get("/route", route)
app.router.add_route("*", "/echo", echo)
app.router.add_get("/missing", missing)
app.router.add_get("/fail", fail)

ctx = None
if len(sys.argv) > 3:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])


async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), ssl_context=ctx)
    await site.start()
    print("port %d" % site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
