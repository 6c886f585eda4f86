"""A SIP callee over TLS (Python's ssl module): answers every INVITE 180 then
200 (with a To-tag and a TLS Contact), every BYE 200, and prints each request
it receives as a JSON line `got {...}`. Usage: tls_uas.py CERT KEY."""
import json
import socket
import ssl
import sys
import threading


def handle(conn):
    buf = b""
    while True:
        try:
            data = conn.recv(65536)
        except OSError:
            return
        if not data:
            return
        buf += data
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            length = 0
            for l in lines:
                if l.lower().startswith(("content-length:", "l:")):
                    length = int(l.split(":", 1)[1])
            if len(rest) < length:
                break
            buf = rest[length:]
            method = lines[0].split(" ", 1)[0]
            hdrs = [l for l in lines[1:] if l]
            print("got " + json.dumps({"method": method, "ruri": lines[0].split(" ")[1],
                                       "via": [h for h in hdrs if h.lower().startswith("via:")]}),
                  flush=True)
            if method in ("INVITE", "BYE"):
                copy = [h for h in hdrs if h.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")]
                to = next(h for h in hdrs if h.lower().startswith("to:"))
                if ";tag=" not in to:
                    to += ";tag=tlsuas"
                codes = [(180, "Ringing"), (200, "OK")] if method == "INVITE" else [(200, "OK")]
                port = conn.getsockname()[1]
                for code, reason in codes:
                    msg = [f"SIP/2.0 {code} {reason}"] + copy + [to]
                    if method == "INVITE":
                        msg.append(f"Contact: <sip:uas@127.0.0.1:{port};transport=tls>")
                    msg.append("Content-Length: 0")
                    conn.sendall(("\r\n".join(msg) + "\r\n\r\n").encode())


def main():
    cert, key = sys.argv[1], sys.argv[2]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    print(f"port {srv.getsockname()[1]}", flush=True)
    while True:
        raw, _ = srv.accept()
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
