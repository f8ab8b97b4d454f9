#!/usr/bin/env python3
"""How soon a funnel's owner sees a request the edge refused.

Runs the real `postern dev` (coord, ingress and node in one process, the README's first
command), then sends forged GitHub deliveries (the second curl command it prints) at
random intervals and measures, for each, the time from curl's return (the edge has
answered 401) until the denial shows:

- `follow`: a line of `postern funnel log demo --follow --json` (a read held at the coord);
- `inspect`: an entry of kind `denied` in request inspection's JSON API, polled every
  20 ms (the daemon's puller keeps a read held at the coord);
- `poll 2 s`: `postern funnel log demo --denied --json` run every 2 s, which is what the
  daemon's puller did before reads could wait (the same-run reference).

Usage: bench/edge-log/run.py [--requests N] [--postern PATH] [--out FILE]
Default binary: target/release/postern (build it with
`cargo build --release -p postern --bin postern`).
Prints a Markdown table (and writes it to --out).
"""

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dev(postern, state, https_port, inspect):
    child = subprocess.Popen(
        [postern, "dev", "--https-port", str(https_port), "--inspect", inspect,
         "--state-dir", state],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={k: v for k, v in os.environ.items() if k != "POSTERN_DEV_WEBHOOK_SECRET"},
    )
    curls = []
    deadline = time.time() + 120
    while len(curls) < 2:
        line = child.stdout.readline()
        if not line:
            sys.exit("postern dev stopped before printing its curl commands")
        if line.startswith("curl "):
            curls.append(line.strip())
        if time.time() > deadline:
            sys.exit("postern dev printed no curl commands within 120 s")
    threading.Thread(target=lambda: [None for _ in child.stdout], daemon=True).start()
    return child, curls[1]


class Watch:
    """Records when each new denial (by the coord's id) is first seen by one observer."""

    def __init__(self):
        self.seen = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def saw(self, ids):
        now = time.monotonic()
        with self.lock:
            for i in ids:
                self.seen.setdefault(i, now)
            self.changed.notify_all()

    def count(self):
        with self.lock:
            return len(self.seen)

    def wait_for(self, count, timeout):
        """The time the `count`th denial was first seen, or None."""
        end = time.monotonic() + timeout
        with self.lock:
            while len(self.seen) < count:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
            return sorted(self.seen.values())[count - 1]


def follow(postern, node_dir, watch, stop):
    child = subprocess.Popen(
        [postern, "funnel", "log", "demo", "--denied", "--follow", "--json",
         "--state-dir", node_dir],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in child.stdout:
        if stop.is_set():
            break
        decision = json.loads(line)
        watch.saw([decision["id"]])
    child.kill()


def inspect_poll(inspect, watch, stop):
    while not stop.is_set():
        try:
            with urllib.request.urlopen(
                    f"http://{inspect}/api/requests?kind=denied", timeout=5) as answer:
                value = json.load(answer)
            entries = value if isinstance(value, list) else value.get("requests", [])
            # The inspection store's own ids: each observer counts its own denials.
            watch.saw([e["id"] for e in entries if e.get("kind") == "denied"])
        except OSError:
            pass
        time.sleep(0.02)


def log_poll(postern, node_dir, watch, stop):
    while not stop.is_set():
        out = subprocess.run(
            [postern, "funnel", "log", "demo", "--denied", "--json", "--state-dir", node_dir],
            capture_output=True, text=True)
        if out.returncode == 0:
            watch.saw([d["id"] for d in json.loads(out.stdout)["decisions"]])
        stop.wait(2.0)


def summary(latencies):
    ms = sorted(x * 1000 for x in latencies)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return statistics.median(ms), p90, ms[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--postern", default="target/release/postern")
    parser.add_argument("--out")
    args = parser.parse_args()
    postern = os.path.abspath(args.postern)
    if not os.access(postern, os.X_OK):
        sys.exit(f"{postern} is not built: cargo build --release -p postern --bin postern")

    state = tempfile.mkdtemp(prefix="postern-edge-log-bench.")
    inspect = f"127.0.0.1:{free_port()}"
    dev, forged = start_dev(postern, state, free_port(), inspect)
    node_dir = os.path.join(state, "node")
    stop = threading.Event()
    watches = {"follow": Watch(), "inspect": Watch(), "poll 2 s": Watch()}
    threads = [
        threading.Thread(target=follow, args=(postern, node_dir, watches["follow"], stop)),
        threading.Thread(target=inspect_poll, args=(inspect, watches["inspect"], stop)),
        threading.Thread(target=log_poll, args=(postern, node_dir, watches["poll 2 s"], stop)),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(3)  # the follower and the pollers are in place

    latencies = {name: [] for name in watches}
    random.seed(1)
    try:
        for n in range(1, args.requests + 1):
            time.sleep(random.uniform(0.5, 2.5))
            out = subprocess.run(["sh", "-c", forged], capture_output=True, text=True)
            answered = time.monotonic()
            status = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "?"
            if status not in ("401", "403"):
                sys.exit(f"the forged delivery got {status}, not 401/403: {out.stdout}")
            for name, watch in watches.items():
                seen = watch.wait_for(n, timeout=30)
                if seen is None:
                    sys.exit(f"{name}: denial {n} not seen within 30 s")
                latencies[name].append(max(0.0, seen - answered))
    finally:
        stop.set()
        dev.terminate()
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [
        f"Run of {when}: {args.requests} forged deliveries through `postern dev`, "
        "0.5 to 2.5 s apart (seeded). Time from the edge's 401 to the denial being seen, ms.",
        "",
        "| observer | median | p90 | max |",
        "|---|---|---|---|",
    ]
    for name in watches:
        med, p90, worst = summary(latencies[name])
        lines.append(f"| {name} | {med:.0f} | {p90:.0f} | {worst:.0f} |")
    ref = summary(latencies["poll 2 s"])[0]
    lines.append("")
    lines.append("Median against the 2 s poll: "
                 + ", ".join(f"{name} {summary(latencies[name])[0] / ref:.2f}"
                             for name in ("follow", "inspect")))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
