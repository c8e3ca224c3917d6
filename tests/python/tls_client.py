"""A Python `websockets` client over wss:// with an `ssl` context that
trusts only the given test CA, against wsgate's pub/sub app: subscribes,
publishes to itself through a second connection, uses the echo command,
then reconnects with the first connection's TLS session and checks it was
resumed (TLS 1.2 session reuse). Prints "ok".

    python3 tls_client.py wss://localhost:PORT/ws CA.pem 1.2|1.3
"""
import asyncio
import json
import socket
import ssl
import sys

import websockets


def context(ca, version):
    ctx = ssl.create_default_context(cafile=ca)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = v
    ctx.maximum_version = v
    return ctx


async def main(url, ca, version):
    ctx = context(ca, version)
    async with websockets.connect(url, ssl=ctx) as sub, websockets.connect(url, ssl=ctx) as pub:
        tls = sub.transport.get_extra_info("ssl_object")
        want = "TLSv1.2" if version == "1.2" else "TLSv1.3"
        assert tls.version() == want, tls.version()
        assert tls.selected_alpn_protocol() in (None, "http/1.1"), tls.selected_alpn_protocol()
        await sub.send(json.dumps({"type": "subscribe", "topic": "py"}))
        assert json.loads(await sub.recv())["type"] == "subscribed"
        for n in range(20):
            body = {"n": n, "pad": "x" * (n * 500)}
            await pub.send(json.dumps({"type": "publish", "topic": "py", "payload": body}))
            msg = json.loads(await asyncio.wait_for(sub.recv(), 5))
            assert msg["type"] == "message" and msg["payload"] == body, msg
        await pub.send(json.dumps({"type": "echo", "payload": {"hello": "tls"}}))
        echoed = json.loads(await asyncio.wait_for(pub.recv(), 5))
        assert echoed["payload"] == {"hello": "tls"}, echoed
        session = tls.session
    if version == "1.2":
        # Session reuse with the plain ssl module: websockets does not pass
        # a session through, so the handshake is driven on a raw socket.
        host, port = url.split("//")[1].split("/")[0].split(":")
        raw = socket.create_connection((host, int(port)))
        again = ctx.wrap_socket(raw, server_hostname=host, session=session)
        assert again.session_reused, "TLS 1.2 session not resumed"
        again.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
