#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (re-run to regenerate).

A handful of meaningful inputs per target: valid and nearly valid upgrade
requests, headers of every length class, masked, fragmented and control
frames. The fuzzer mutates from these; keep the set small.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def header(fin, op, length, mask=MASK, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        h = bytes([b0, mbit | length])
    elif length <= 0xFFFF:
        h = bytes([b0, mbit | 126]) + struct.pack(">H", length)
    else:
        h = bytes([b0, mbit | 127]) + struct.pack(">Q", length)
    return h + (mask if mask is not None else b"")


def frame(fin, op, payload, mask=MASK):
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header(fin, op, len(payload), mask) + masked


def request(path="/ws", extra="", key="dGhlIHNhbXBsZSBub25jZQ=="):
    return (
        f"GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# --- handshake -----------------------------------------------------------------
write("handshake", "valid", request())
write("handshake", "valid-query-origin", request("/ws?token=abc", "Origin: http://example.com\r\n"))
write("handshake", "valid-root-subprotocols",
      request("/", "Sec-WebSocket-Protocol: chat, v2.wsgate\r\n"
                   "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
write("handshake", "valid-pipelined-frame", request() + frame(True, TEXT, b"hi"))
write("handshake", "lf-only", request().replace(b"\r\n", b"\n"))
write("handshake", "version-8", request().replace(b"Version: 13", b"Version: 8"))
write("handshake", "short-key", request(key="c2hvcnQ="))
write("handshake", "post", request().replace(b"GET", b"POST"))
write("handshake", "partial", request()[:40])

# --- frame_header --------------------------------------------------------------
write("frame_header", "masked-7bit", header(True, TEXT, 5))
write("frame_header", "masked-16bit", header(True, BINARY, 300))
write("frame_header", "masked-64bit", header(False, BINARY, 70000))
write("frame_header", "unmasked-server", header(True, TEXT, 2, mask=None) + b"hi")
write("frame_header", "ping-125", header(True, PING, 125))
write("frame_header", "close-0", header(True, CLOSE, 0))
write("frame_header", "rsv1-with-ext", header(True, TEXT, 3, rsv=4) + b"\x04\x00\x00\x00\x00\x00\x00\x00\x04")
write("frame_header", "non-minimal-16", bytes([0x82, 0x80 | 126, 0, 5]) + MASK)
write("frame_header", "huge-64", bytes([0x82, 0x80 | 127]) + struct.pack(">Q", (1 << 63) - 1) + MASK)

# --- message: 4 settings bytes (frame limit, message limit, fragments, chunk seed)
SETTINGS = bytes([64, 64, 6, 3])  # 257-byte frames, 513-byte messages, 7 fragments


def msg(name, wire, settings=SETTINGS):
    write("message", name, settings + wire)


msg("text-binary", frame(True, TEXT, "héllo 𝄞".encode()) + frame(True, BINARY, bytes(range(40))))
msg("fragmented-with-controls",
    frame(False, TEXT, b"frag") + frame(True, PING, b"p1") + frame(False, CONT, b"men")
    + frame(True, PONG, b"") + frame(True, CONT, b"ted"))
msg("utf8-split-across-fragments",
    frame(False, TEXT, "€".encode()[:1]) + frame(False, CONT, "€".encode()[1:2])
    + frame(True, CONT, "€".encode()[2:]))
msg("invalid-utf8-fragment", frame(False, TEXT, "κόσμε".encode()) + frame(False, CONT, b"\xf4\x90"))
msg("close-with-reason", frame(True, CLOSE, struct.pack(">H", 1000) + b"bye") + frame(True, TEXT, b"after"))
msg("close-bad-code", frame(True, CLOSE, struct.pack(">H", 1005)))
msg("16bit-binary", frame(True, BINARY, bytes(i % 251 for i in range(200))))
msg("too-many-fragments", frame(False, BINARY, b"a") + b"".join(frame(False, CONT, b"b") for _ in range(8)))
msg("orphan-continuation", frame(True, CONT, b"x"))
