"""Turns the raw results of bench/funnel/run.sh into the markdown tables of docs/benchmarks.md.

Usage (run.sh calls it): report.py RESULTS LOADS STARTED COMMIT T ROUNDS CONNS THREADS GATE_T

RESULTS has one line per measurement:
  http|gatepair KEY ROUND RESULT requests=.. seconds=.. rps=.. p50_us=.. p99_us=.. non2xx=.. errors=..
       cpu_ticks=.. wall=.. hz=.. ncpu=..
  tcp KEY ROUND bps=.. seconds=.. cpu_ticks=.. wall=.. hz=.. ncpu=..
LOADS has the 1-minute load average sampled before and after every measurement.
"""

import statistics
import sys

HTTP_NAMES = {
    "direct_http": "direct to the origin, HTTP",
    "direct_https": "direct, HTTPS via a socat TLS relay",
    "funnel_open": "**funnel, no gate** (ingress: TLS + HTTP + audit)",
    "funnel_gated": "**funnel, GitHub webhook gate**",
    "funnel_ip": "funnel, IP gate (allow 127.0.0.0/8)",
    "funnel_jwt": "funnel, JWT gate (ES256, cached JWKS)",
    "funnel_rate": "funnel, no gate, per-client and per-funnel rate limits",
    "funnel_wg": "funnel, no gate, via the WireGuard stand-in (CPU: ingress + both postern)",
    "funnel_mesh": "**funnel over the mesh, no gate** (ingress → embedded node → WireGuard → node → origin; CPU: ingress + node)",
}
TCP_NAMES = {
    "direct": "direct to iperf3",
    "socat": "socat TCP relay (plain, one hop)",
    "tcp_funnel": "**ingress `[[tcp_funnel]]`** (plain, one hop, edge only)",
    "rathole": "**rathole 0.5.0, Noise** (encrypted, two hops)",
    "bore": "bore 0.6 (plain, two hops)",
    "tcp_funnel_wg": "**`[[tcp_funnel]]` via the WireGuard stand-in** (encrypted, three processes)",
    "tcp_funnel_mesh": "**TCP funnel over the mesh** (`postern funnel --tcp`: encrypted, ingress + node)",
}


def parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            kind, key, rnd = parts[0], parts[1], int(parts[2])
            fields = {}
            for part in parts[3:]:
                if "=" in part:
                    name, value = part.split("=", 1)
                    fields[name] = float(value)
            rows.append((kind, key, rnd, fields))
    return rows


def cpu_per_request(r):
    """The ingress's CPU time per request in µs."""
    return r["cpu_ticks"] / r["hz"] * 1e6 / max(r["requests"], 1)


def mean(values):
    return statistics.fmean(values) if values else float("nan")


def fmt_rounds(values, digits):
    return " / ".join(f"{v:,.{digits}f}" for v in values)


def main():
    results, loads_path, started, commit, t, rounds, conns, threads, gate_t = sys.argv[1:10]
    rows = parse(results)
    with open(loads_path) as f:
        loads = [float(x) for x in f.read().split()]
    out = []
    out.append(
        f"Run of {started}, commit {commit}, T={t} s per measurement, {rounds} rounds "
        f"(ABBA order), wrk -t{threads} -c{conns}. 1-minute load average during the "
        f"measurements: {min(loads):.1f} to {max(loads):.1f} "
        f"(median {statistics.median(loads):.1f}) on 2 cores."
    )
    out.append("")

    http = {}
    for kind, key, rnd, fields in rows:
        if kind == "http":
            http.setdefault(key, []).append(fields)
    base = mean([r["rps"] for r in http.get("direct_http", [])])
    out.append(
        "| HTTPS variant (webhook POST, 1 KiB body) | req/s (mean) | per round | × direct HTTP "
        "| p50 ms | p99 ms | ingress CPU µs/request | non-2xx, errors |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for key, name in HTTP_NAMES.items():
        runs = http.get(key, [])
        if not runs:
            continue
        rps = [r["rps"] for r in runs]
        cpu = "-"
        if runs[0].get("ncpu", 0) > 0:
            cpu = f"{mean([cpu_per_request(r) for r in runs]):.0f}"
        bad = int(sum(r["non2xx"] for r in runs)), int(sum(r["errors"] for r in runs))
        out.append(
            f"| {name} | {mean(rps):,.0f} | {fmt_rounds(rps, 0)} | {mean(rps) / base:.2f} "
            f"| {mean([r['p50_us'] for r in runs]) / 1000:.2f} "
            f"| {mean([r['p99_us'] for r in runs]) / 1000:.2f} | {cpu} | {bad[0]}, {bad[1]} |"
        )
    out.append("")
    pairs = {}
    for kind, key, rnd, fields in rows:
        if kind == "gatepair":
            pairs.setdefault(rnd, {})[key] = fields
    pairs = [p for _, p in sorted(pairs.items()) if len(p) == 2]
    if "funnel_open" in http and "funnel_gated" in http:
        opened = http["funnel_open"]
        gated = http["funnel_gated"]
        ratio = mean([r["rps"] for r in gated]) / mean([r["rps"] for r in opened])
        cpu_o = mean([cpu_per_request(r) for r in opened])
        cpu_g = mean([cpu_per_request(r) for r in gated])
        out.append(
            f"Gate cost in the rounds: gated / ungated requests/s = **{ratio:.3f}** "
            f"({(ratio - 1) * 100:+.1f} %); ingress CPU per request {cpu_g:.0f} µs gated "
            f"versus {cpu_o:.0f} µs ungated ({(cpu_g / cpu_o - 1) * 100:+.1f} %)."
        )
    if "funnel_open" in http:
        opened = http["funnel_open"]
        rps_o = mean([r["rps"] for r in opened])
        cpu_o = mean([cpu_per_request(r) for r in opened])
        each = []
        for key in ("funnel_gated", "funnel_ip", "funnel_jwt", "funnel_rate"):
            if key in http:
                runs = http[key]
                each.append(
                    f"{HTTP_NAMES[key].strip('*')}: requests/s "
                    f"{mean([r['rps'] for r in runs]) / rps_o:.3f}, CPU per request "
                    f"{mean([cpu_per_request(r) for r in runs]) / cpu_o:.3f}"
                )
        if each:
            out.append("Each gate against the funnel without a gate, in the rounds: " + "; ".join(each) + ".")
    if pairs:
        rps_ratios = [p["funnel_gated"]["rps"] / p["funnel_open"]["rps"] for p in pairs]
        cpu_ratios = [
            cpu_per_request(p["funnel_gated"]) / cpu_per_request(p["funnel_open"])
            for p in pairs
        ]
        med = statistics.median(rps_ratios)
        verdict = "met" if med >= 0.95 else "NOT met"
        out.append(
            f"Gate cost in {len(pairs)} back-to-back pairs of {gate_t} s runs: gated / "
            f"ungated requests/s median **{med:.3f}** (pairs: {fmt_rounds(rps_ratios, 3)}); "
            f"ingress CPU per request gated / ungated median "
            f"{statistics.median(cpu_ratios):.3f} (pairs: {fmt_rounds(cpu_ratios, 3)}). "
            f"Target < 5 % of requests/s: {verdict}."
        )
    out.append("")

    tcp = {}
    for kind, key, rnd, fields in rows:
        if kind == "tcp":
            tcp.setdefault(key, []).append(fields)
    peer = mean([r["bps"] for r in tcp.get("rathole", [])])
    out.append(
        "| TCP variant (iperf3, 1 stream) | Gbit/s (mean) | per round | × rathole "
        "| relay CPU, % of one core |"
    )
    out.append("|---|---|---|---|---|")
    for key, name in TCP_NAMES.items():
        runs = tcp.get(key, [])
        if not runs:
            continue
        gbps = [r["bps"] / 1e9 for r in runs]
        cpu = "-"
        if runs[0].get("ncpu", 0) > 0:
            cpu = f"{mean([r['cpu_ticks'] / r['hz'] / r['wall'] * 100 for r in runs]):.0f}"
        out.append(
            f"| {name} | {mean(gbps):.2f} | {fmt_rounds(gbps, 2)} "
            f"| {mean(gbps) * 1e9 / peer:.2f} | {cpu} |"
        )
    out.append("")
    if "tcp_funnel" in tcp and "rathole" in tcp:
        ratio = mean([r["bps"] for r in tcp["tcp_funnel"]]) / peer
        verdict = "met" if ratio >= 1.0 else "NOT met"
        out.append(
            f"TCP funnel / encrypted rathole = **{ratio:.2f}**; target ≥ 1: {verdict} "
            f"(edge only: this figure has no encryption and no mesh hop)."
        )
    if "tcp_funnel_wg" in tcp and "rathole" in tcp:
        ratio = mean([r["bps"] for r in tcp["tcp_funnel_wg"]]) / peer
        out.append(
            f"TCP funnel through the WireGuard stand-in / encrypted rathole = **{ratio:.2f}** "
            f"(encrypted like rathole; not yet the real mesh path)."
        )
    if "tcp_funnel_mesh" in tcp and "rathole" in tcp:
        ratio = mean([r["bps"] for r in tcp["tcp_funnel_mesh"]]) / peer
        verdict = "met" if ratio >= 1.0 else "NOT met"
        out.append(
            f"TCP funnel over the mesh (the product's path, encrypted) / encrypted rathole = "
            f"**{ratio:.2f}**; target ≥ 1: {verdict}."
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
