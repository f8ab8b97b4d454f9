#!/usr/bin/env python3
"""Pools the gate pairs of one or more `bench/funnel/run.sh` runs (their printed output)
and reports, per gate, the ratio of the pooled means of requests/s (gated / ungated) with
a 95 % bootstrap interval over the pairs.

One run of 10 pairs cannot resolve a few per cent on a 2-core machine (adjacent runs of
the same funnel differ by up to 10 %); pooling several runs' pairs can. Usage:

    bench/funnel/pairs.py run1.log run2.log ...
"""

import math
import random
import re
import statistics
import sys

PAIR = re.compile(
    r"pair:(?P<gate>\S+) (?P<key>\S+) round (?P<round>\d+): RESULT requests=\d+ "
    r"seconds=[\d.]+ rps=(?P<rps>[\d.]+)"
)
BASELINE = {"funnel_mtls": "funnel_open_oha", "funnel_mesh_gated": "funnel_mesh"}


def read_pairs(paths):
    """{gate: [(gated req/s, ungated req/s), ...]} over every run."""
    pairs = {}
    for path in paths:
        rounds = {}
        with open(path, encoding="utf-8") as log:
            for line in log:
                match = PAIR.search(line)
                if match:
                    key = (match["gate"], int(match["round"]))
                    rounds.setdefault(key, {})[match["key"]] = float(match["rps"])
        for (gate, _), runs in sorted(rounds.items()):
            base = BASELINE.get(gate, "funnel_open")
            if gate in runs and base in runs:
                pairs.setdefault(gate, []).append((runs[gate], runs[base]))
    return pairs


def ratio_of_means(pairs):
    return statistics.mean(g for g, _ in pairs) / statistics.mean(b for _, b in pairs)


def main(paths):
    if not paths:
        sys.exit(__doc__)
    rng = random.Random(1)
    for gate, pairs in read_pairs(paths).items():
        boots = sorted(
            ratio_of_means([rng.choice(pairs) for _ in pairs]) for _ in range(5000)
        )
        low, high = boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]
        geo = math.exp(statistics.mean(math.log(g / b) for g, b in pairs))
        print(
            f"{gate}: {len(pairs)} pairs, ratio of the means {ratio_of_means(pairs):.3f} "
            f"(95 % interval {low:.3f} to {high:.3f}), geometric mean of the ratios {geo:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
