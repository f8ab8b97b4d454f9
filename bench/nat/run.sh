#!/usr/bin/env bash
# bench/nat/run.sh — throughput and round trip, direct versus relayed, in the NAT lab.
#
#   sudo bench/nat/run.sh                 (release build; NAT_BENCH_MB=64 per transfer)
#   PROFILE=dev NAT_BENCH_MB=16 bench/nat/run.sh
#
# Runs the `nat_benchmark` test of cli/tests/nat_paths.rs (in normal test runs it moves 8 MiB; here NAT_BENCH_MB, default 64):
# the lab's namespaces (docs/lab.md), `postern-coord serve --relay --stun` on the coord host,
# two `postern up` nodes in home A and home B. First both homes behind easy (cone) NATs,
# where the path is direct; then both behind hard (symmetric) NATs, where it goes through
# the relay in the coord. For each: the median of 20 `postern ping` round trips, and the time
# of one `postern nc` transfer of NAT_BENCH_MB MiB (tailnet TCP through the userspace stack).
# Prints a markdown table (to stderr, with the test's output), first row a reference without a
# tunnel (kernel ping and one iperf3 connection from home A through its NAT to the coord
# host), and how many packets the relay forwarded and dropped during the relayed transfer.
#
# Needs root (namespaces, nftables), curl, conntrack, and cargo.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROFILE="${PROFILE:-release}"

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces, nftables): sudo $0" >&2; exit 1; }

cd "$ROOT"
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
# postern-coord must sit next to the postern test binary's postern. Build both packages in one
# command: building postern-coord alone resolves dependency features differently and makes
# the test build below recompile much of the tree.
cargo build "${profile_flag[@]}" -p postern-coord -p postern --bins >&2
NAT_BENCH_MB="${NAT_BENCH_MB:-64}" cargo test "${profile_flag[@]}" -p postern --test nat_paths \
  -- --exact nat_benchmark --nocapture --test-threads 1
