#!/usr/bin/env python3
"""Measures a chatflow-server's resident memory per idle WebSocket connection.

Opens N connections (completing the WebSocket handshake on each), waits for
the server to settle, and reports (RSS after - RSS before) / N, read from
/proc/PID/status. Usage: bench/idle_rss.py PID HOST:PORT [N]
"""
import base64
import os
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    pid, target = int(sys.argv[1]), sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    host, port = target.rsplit(":", 1)
    before = rss_kib(pid)
    socks = []
    for i in range(n):
        s = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        room = i % 20 + 1
        s.sendall(
            f"GET /chat/{room} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        socks.append(s)
    for s in socks:
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("server closed during handshake")
            reply += chunk
        if not reply.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {reply[:80]!r}")
    time.sleep(2)
    after = rss_kib(pid)
    print(f"connections={n} rss_before_kib={before} rss_after_kib={after} "
          f"per_connection_bytes={(after - before) * 1024 / n:.0f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
