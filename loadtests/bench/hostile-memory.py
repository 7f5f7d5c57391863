#!/usr/bin/env python3
"""What hostile connections cost a node (docs/security.md, "Bounds").

Starts the release binary on the embedded memory broker (or on REDIS_URL),
opens N connections of one kind that each hold as much as a client can make
the node hold, and prints the node's resident memory and descriptors per
connection. Loopback only; every connection and the node are closed at the
end.

    python3 loadtests/bench/hostile-memory.py [kind] [count]

kinds: partial-frame (a WebSocket frame of 120 KiB, all but its last byte),
half-open (a TCP socket that sends half a request), stomp-transaction (a STOMP
transaction holding a frame's worth), pre-connect (a STOMP socket with 15 KiB
of a CONNECT), idle (an idle WebSocket, for comparison).
"""

import json
import os
import socket
import subprocess
import sys
import time

BINARY = os.environ.get("RELAY_BINARY", "target/release/chat-relay")


def start(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"}
    env.update({"RELAY_LISTEN": "127.0.0.1:0", "RELAY_LOG_FORMAT": "json", "RUST_LOG": "warn,chat_relay=info",
                "RELAY_MAX_CONNECTIONS_PER_CLIENT": "0", "RELAY_MAX_SOCKETS_PER_ADDRESS": "0",
                "RELAY_MAX_CONNECTIONS": "20000", "RELAY_HEADER_TIMEOUT_SECS": "600",
                "RELAY_IDLE_TIMEOUT_SECS": "600"})
    env.update(extra)
    node = subprocess.Popen([BINARY], env=env, stdout=subprocess.PIPE, text=True)
    for line in node.stdout:
        entry = json.loads(line)
        if "listen" in entry:
            host, port = entry["listen"].rsplit(":", 1)
            return node, (host, int(port))
    raise SystemExit("the node did not start")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def upgrade(address, path, protocol=None):
    sock = socket.create_connection(address)
    extra = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("upgrade refused")
        answer += chunk
    if b" 101 " not in answer.split(b"\r\n", 1)[0]:
        raise SystemExit(f"upgrade refused: {answer[:80]!r}")
    return sock


def frame(payload, fin=True):
    """A masked text frame (the mask is zero: the payload goes as it is)."""
    head = bytes([0x81 if fin else 0x01])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def hold(kind, address):
    if kind == "idle":
        return upgrade(address, "/v1/ws")
    if kind == "partial-frame":
        sock = upgrade(address, "/v1/ws")
        whole = frame(b"x" * (120 * 1024))
        sock.sendall(whole[:-1])
        return sock
    if kind == "half-open":
        sock = socket.create_connection(address)
        sock.sendall(b"GET /v1/rooms/r/messages HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        return sock
    if kind == "pre-connect":
        sock = upgrade(address, "/v1/stomp", "v12.stomp")
        sock.sendall(frame(b"CONNECT\naccept-version:1.2\nx:" + b"y" * (15 * 1024)))
        return sock
    if kind == "stomp-transaction":
        sock = upgrade(address, "/v1/stomp", "v12.stomp")
        sock.sendall(frame(b"CONNECT\naccept-version:1.2\nhost:relay\n\n\0"))
        sock.sendall(frame(b"BEGIN\ntransaction:t\n\n\0"))
        body = b'"' + b"x" * 60_000 + b'"'
        for _ in range(2):
            sock.sendall(frame(b"SEND\ndestination:/topic/t\ntransaction:t\n\n" + body + b"\0"))
        return sock
    raise SystemExit(f"unknown kind {kind}")


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "partial-frame"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    node, address = start({"RELAY_PUBLISH_RATE": "100000"})
    try:
        time.sleep(0.5)
        rss0, fds0 = rss_kib(node.pid), descriptors(node.pid)
        held = [hold(kind, address) for _ in range(count)]
        time.sleep(2)
        rss1, fds1 = rss_kib(node.pid), descriptors(node.pid)
        print(json.dumps({"kind": kind, "connections": count, "rss_before_kib": rss0, "rss_after_kib": rss1,
                          "kib_per_connection": round((rss1 - rss0) / count, 2),
                          "descriptors_per_connection": round((fds1 - fds0) / count, 3)}))
        for sock in held:
            sock.close()
    finally:
        node.terminate()
        node.wait(timeout=20)


if __name__ == "__main__":
    main()
