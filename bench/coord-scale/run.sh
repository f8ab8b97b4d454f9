#!/usr/bin/env bash
# The coord scale benchmark: builds postern-coord and the harness in release mode, raises
# the open-file limit (each simulated node holds one connection, and so does the coord),
# and runs it. Arguments go to the harness (`--help` lists them), e.g.
#   bench/coord-scale/run.sh --nodes 10000 --json /tmp/coord-scale.json
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n "$(ulimit -Hn)"
cargo build --release -p postern-coord --bin postern-coord --example coord-scale
exec target/release/examples/coord-scale --coord-bin target/release/postern-coord "$@"
