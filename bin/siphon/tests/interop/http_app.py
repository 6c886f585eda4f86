"""An HTTP application nobody here wrote the server of: PyPI's aiohttp.

Usage: http_app.py PORT [CERT KEY]   (0: any; prints "port N"; with a
certificate and key it serves HTTPS)
  GET  /user?r_uri=U   -> 200 "sip:U@127.0.0.1:5099", header X-App: aiohttp
  POST /echo           -> 201 with the request body, method in X-Method
  any  /echo           -> 200 with method, body and X-Test header
  GET  /missing        -> 404 "no such thing"
  GET  /fail           -> 500 "broken"
"""
import asyncio
import ssl
import sys

from aiohttp import web


async def user(request):
    return web.Response(text="sip:%s@127.0.0.1:5099" % request.query.get("r_uri", ""),
                        headers={"X-App": "aiohttp"})


async def echo(request):
    body = await request.text()
    status = 201 if request.method == "POST" else 200
    return web.Response(status=status,
                        text="%s %s %s" % (request.method, body, request.headers.get("X-Test", "-")),
                        headers={"X-Method": request.method})


async def missing(request):
    return web.Response(status=404, text="no such thing")


async def fail(request):
    return web.Response(status=500, text="broken")


app = web.Application()
app.router.add_get("/user", user)
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
