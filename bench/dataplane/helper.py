#!/usr/bin/env python3
"""Small helpers for bench/dataplane/run.sh (standard library only).

  helper.py rr-serve ADDR PORT         TCP echo server for the request/response test
  helper.py rr-client HOST PORT N      N one-byte request/response round trips on one
                                       connection (TCP_NODELAY); prints "p50_us mean_us p99_us"
  helper.py iperf-gbps FILE            Gbit/s received, from an iperf3 -J result file
  helper.py ping-avg-ms FILE           average RTT from the summary of `ping -q`
"""
import json
import re
import socket
import statistics
import sys
import threading
import time


def rr_serve(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(16)

    def serve(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                data = conn.recv(64)
                if not data:
                    return
                conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rr_client(host, port, n):
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for i in range(n + 50):
        start = time.perf_counter_ns()
        conn.sendall(b"x")
        if not conn.recv(64):
            raise SystemExit("the server closed the connection")
        if i >= 50:  # the first round trips warm up (and may wait for a handshake)
            samples.append((time.perf_counter_ns() - start) / 1000)
    conn.close()
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{statistics.median(samples):.0f} {statistics.mean(samples):.0f} {p99:.0f}")


def iperf_gbps(path):
    with open(path) as f:
        result = json.load(f)
    if "error" in result:
        raise SystemExit(f"iperf3: {result['error']}")
    print(f"{result['end']['sum_received']['bits_per_second'] / 1e9:.3f}")


def ping_avg_ms(path):
    text = open(path).read()
    m = re.search(r"= [\d.]+/([\d.]+)/", text)
    print(m.group(1) if m else "n/a")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "rr-serve":
        rr_serve(sys.argv[2], int(sys.argv[3]))
    elif cmd == "rr-client":
        rr_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "iperf-gbps":
        iperf_gbps(sys.argv[2])
    elif cmd == "ping-avg-ms":
        ping_avg_ms(sys.argv[2])
    else:
        raise SystemExit(__doc__)
