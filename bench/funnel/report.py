"""Turns the raw results of bench/funnel/run.sh into the markdown tables of docs/benchmarks.md.

Usage (run.sh calls it): report.py RESULTS LOADS STARTED COMMIT T ROUNDS CONNS THREADS GATE_T

RESULTS has one line per measurement:
  http KEY ROUND RESULT requests=.. seconds=.. rps=.. p50_us=.. p99_us=.. non2xx=.. errors=..
       cpu_ticks=.. wall=.. hz=.. ncpu=..
  pair:GATE KEY PAIR (the same fields): one run of the back-to-back pair number PAIR
       comparing the funnel with the gate GATE against its baseline KEY (the funnel
       without a gate, driven by the same load generator)
  tcp KEY ROUND bps=.. seconds=.. cpu_ticks=.. wall=.. hz=.. ncpu=..
  tcppair KEY PAIR (the same fields): one run of the back-to-back pair number PAIR of the
       TCP funnel over the mesh and rathole, each side on a core of its own
  tcppair_reverse KEY PAIR (the same fields): the same pair as a download (`iperf3 -R`)
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
    "funnel_jwt": "funnel, JWT gate (ES256, cached JWKS, one token reused: verified once)",
    "funnel_oidc": "funnel, OIDC login gate (session cookie)",
    "funnel_rate": "funnel, no gate, per-client and per-funnel rate limits",
    "funnel_open_oha": "funnel, no gate, driven by oha (the mTLS baseline)",
    "funnel_mtls": "funnel, mTLS gate (client certificate; oha)",
    "funnel_wg": "funnel, no gate, via the WireGuard stand-in (CPU: ingress + both postern)",
    "funnel_mesh": "**funnel over the mesh, no gate** (ingress → embedded node → WireGuard → node → origin; CPU: ingress + node)",
    "funnel_mesh_gated": "**funnel over the mesh, GitHub webhook gate** (`postern funnel --verify-webhook github`; CPU: ingress + node)",
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


# Each gate's funnel and the ungated funnel it is compared with (same load generator).
GATES = {
    "funnel_gated": "funnel_open",
    "funnel_ip": "funnel_open",
    "funnel_jwt": "funnel_open",
    "funnel_oidc": "funnel_open",
    "funnel_rate": "funnel_open",
    "funnel_mtls": "funnel_open_oha",
    "funnel_mesh_gated": "funnel_mesh",
}


def ratios(base_runs, gate_runs):
    """Gate / baseline requests/s and ingress CPU per request, from the means of the runs."""
    rps = mean([r["rps"] for r in gate_runs]) / mean([r["rps"] for r in base_runs])
    cpu = mean([cpu_per_request(r) for r in gate_runs]) / mean(
        [cpu_per_request(r) for r in base_runs]
    )
    return rps, cpu


def spread(values, digits=3):
    """median (min to max) of ratios."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f} to {max(values):.{digits}f})"
    )


def gate_costs(http, rows, gate_t):
    """The table of every gate's cost against its ungated baseline: in the rounds, and in
    the back-to-back pairs (median and spread of the per-pair ratios)."""
    pairs = {}
    for kind, key, rnd, fields in rows:
        if kind.startswith("pair:"):
            pairs.setdefault(kind[5:], {}).setdefault(rnd, {})[key] = fields
    out = [
        f"Each gate against the funnel without a gate (gate / no gate; requests/s below 1 and "
        f"CPU above 1 are the gate's cost). Pairs: back-to-back runs of {gate_t} s, the order "
        f"alternating; the median and the range of the per-pair ratios.",
        "",
        "| gate | req/s, rounds | CPU/request, rounds | req/s, pairs: median (range) "
        "| CPU/request, pairs: median (range) | < 5 % of req/s |",
        "|---|---|---|---|---|---|",
    ]
    for gate, base in GATES.items():
        rounds_rps = rounds_cpu = "-"
        if gate in http and base in http:
            rps, cpu = ratios(http[base], http[gate])
            rounds_rps, rounds_cpu = f"{rps:.3f}", f"{cpu:.3f}"
        done = [p for _, p in sorted(pairs.get(gate, {}).items()) if gate in p and base in p]
        pair_rps = pair_cpu = "-"
        verdict = "-"
        if done:
            per_pair = [ratios([p[base]], [p[gate]]) for p in done]
            rps_values = [r for r, _ in per_pair]
            pair_rps = f"{spread(rps_values)}, {len(done)} pairs"
            pair_cpu = spread([c for _, c in per_pair])
            verdict = "met" if statistics.median(rps_values) >= 0.95 else "NOT met"
        if rounds_rps == "-" and pair_rps == "-":
            continue
        name = HTTP_NAMES[gate].replace("**", "")
        out.append(
            f"| {name} | {rounds_rps} | {rounds_cpu} | {pair_rps} | {pair_cpu} | {verdict} |"
        )
    return out


def main():
    results, loads_path, started, commit, t, rounds, conns, threads, gate_t = sys.argv[1:10]
    pinned = len(sys.argv) > 10 and sys.argv[10] == "1"
    rows = parse(results)
    with open(loads_path) as f:
        loads = [float(x) for x in f.read().split()]
    out = []
    out.append(
        f"Run of {started}, commit {commit}, T={t} s per measurement, {rounds} rounds "
        f"(ABBA order), wrk -t{threads} -c{conns}. 1-minute load average during the "
        f"measurements: {min(loads):.1f} to {max(loads):.1f} "
        f"(median {statistics.median(loads):.1f}) on 2 cores."
        + (
            " Pinned (PIN=1): the ingress alone on CPU 1, everything else on CPU 0."
            if pinned
            else ""
        )
        + (
            " A new connection per request (NEW_CONN=1): every request opens its own TCP"
            " connection and TLS session."
            if len(sys.argv) > 12 and sys.argv[12] == "1"
            else ""
        )
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
    out.extend(gate_costs(http, rows, gate_t))
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
    out.extend(tcp_pairs(rows, sys.argv[11] if len(sys.argv) > 11 else "5"))
    print("\n".join(out))


def tcp_pairs(rows, tcp_t):
    """The TCP funnel over the mesh against rathole in back-to-back pairs (TCP_PAIRS):
    uploads (the public client sends) and downloads (`iperf3 -R`), one row each."""
    table = []
    for kind, direction in (("tcppair", "upload"), ("tcppair_reverse", "download")):
        pairs = {}
        for row_kind, key, rnd, fields in rows:
            if row_kind == kind:
                pairs.setdefault(rnd, {})[key] = fields
        done = [p for _, p in sorted(pairs.items()) if "tcp_funnel_mesh" in p and "rathole" in p]
        if not done:
            continue
        ratios_ = [p["tcp_funnel_mesh"]["bps"] / p["rathole"]["bps"] for p in done]
        mesh = [p["tcp_funnel_mesh"]["bps"] / 1e9 for p in done]
        rathole = [p["rathole"]["bps"] / 1e9 for p in done]
        cpu = [
            p["tcp_funnel_mesh"]["cpu_ticks"] / p["tcp_funnel_mesh"]["hz"] / p["tcp_funnel_mesh"]["wall"] * 100
            for p in done
        ]
        verdict = "met" if statistics.median(ratios_) >= 1.0 else "NOT met"
        table.append(
            f"| {direction} | {len(done)} | {spread(mesh, 2)} | {spread(rathole, 2)} | {spread(ratios_)} "
            f"| {statistics.median(cpu):.0f} | {verdict} |"
        )
    if not table:
        return []
    return [
        "",
        f"TCP pairs, each side on a core of its own (the public side: iperf3's client, the "
        f"ingress, rathole's server on CPU 0; the private side: the node, rathole's client, "
        f"iperf3's server on CPU 1), back-to-back runs of {tcp_t} s, the order alternating; "
        f"uploads: the public client sends; downloads (`iperf3 -R`): the private side sends:",
        "",
        "| direction | pairs | TCP funnel over the mesh, Gbit/s | rathole (Noise), Gbit/s "
        "| mesh / rathole: median (range) | ingress + node CPU, % of one core | target ≥ 1 |",
        "|---|---|---|---|---|---|---|",
        *table,
    ]


if __name__ == "__main__":
    main()
