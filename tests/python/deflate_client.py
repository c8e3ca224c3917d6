"""A Python `websockets` client (it offers permessage-deflate by default)
against wsgate's pub/sub app: checks the extension was negotiated, then
publishes to itself through a second connection and uses the echo command,
with payloads large enough to be compressed both ways. Prints "ok".

    python3 deflate_client.py ws://127.0.0.1:PORT/ws
"""
import asyncio
import json
import sys

import websockets

# Repetitive JSON, as real fan-out payloads are: compresses well.
PAYLOAD = {"items": [{"sym": "ABC%d" % i, "bid": 100 + i, "ask": 101 + i} for i in range(60)]}


def negotiated(ws):
    ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    assert ext.startswith("permessage-deflate"), "no deflate in %r" % ext
    assert "client_no_context_takeover" in ext, ext


async def main(url):
    async with websockets.connect(url) as sub, websockets.connect(url) as pub:
        negotiated(sub)
        negotiated(pub)
        await sub.send(json.dumps({"type": "subscribe", "topic": "py"}))
        assert json.loads(await sub.recv())["type"] == "subscribed"
        for n in range(5):
            body = dict(PAYLOAD, n=n)
            await pub.send(json.dumps({"type": "publish", "topic": "py", "payload": body}))
            msg = json.loads(await asyncio.wait_for(sub.recv(), 5))
            assert msg["type"] == "message" and msg["topic"] == "py", msg
            assert msg["payload"] == body, msg
        await pub.send(json.dumps({"type": "echo", "payload": PAYLOAD}))
        echoed = json.loads(await asyncio.wait_for(pub.recv(), 5))
        assert echoed["payload"] == PAYLOAD, echoed
    print("ok")


asyncio.run(main(sys.argv[1]))
