#!/usr/bin/env bash
# CPU per request of every process on the machine, by command name, while wrk drives one
# funnel after another of a held mesh bench (`HOLD=1 bench/funnel/run.sh --mesh`, started
# first in another shell). It shows where a request's CPU goes across the ingress, the
# node, the coordination server (which stores each edge decision), the origin and wrk
# itself, and so what the whole machine pays per gated request.
#
#   bench/funnel/process_cpu.sh [HOST ...]    (default: mesh meshgated, four times, alternating)
#   S=5 (seconds per run)
set -euo pipefail
die() { echo "process_cpu.sh: $*" >&2; exit 1; }
work="$(ls -d /tmp/funnel-bench.* 2>/dev/null | head -1)" || true
pid="$(pgrep -f 'postern-ingress serve' | head -1)" || true
[ -n "$work" ] && [ -n "$pid" ] || die "no held bench: start HOLD=1 bench/funnel/run.sh --mesh first"
secret="$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^BENCH_GH_SECRET=//p')"
seconds="${S:-5}"
here="$(cd "$(dirname "$0")" && pwd)"
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$work/body.json" | cut -d' ' -f1)"
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(mesh meshgated meshgated mesh mesh meshgated meshgated mesh)

# user + system clock ticks of every live process, summed by command name
snapshot() {
    for stat in /proc/[0-9]*/stat; do
        # fields after the ")" of the command name: utime is the 12th, stime the 13th
        # (a process may exit between the glob and the read: skip it)
        sed -n 's/^[0-9]* (\(.*\)) \(.*\)$/\1 \2/p' "$stat" 2>/dev/null || true
    done | awk '{t[$1] += $13 + $14} END {for (k in t) print k, t[k]}' | sort
}
hz="$(getconf CLK_TCK)"
for host in "${hosts[@]}"; do
    snapshot >"$work/cpu.before"
    out="$({ /usr/bin/time -f "WRKCPU %U %S" unshare --mount --propagation private -- \
        sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$work/hosts" \
        wrk -t2 -c32 -d"${seconds}s" -s "$here/webhook.lua" "https://$host.bench.test:18444/hook" -- \
        "$work/body.json" "$signature" "cpu$RANDOM" "" ""; } 2>&1)"
    snapshot >"$work/cpu.after"
    requests="$(echo "$out" | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')"
    [ -n "$requests" ] && [ "$requests" -gt 0 ] || die "wrk measured nothing for $host: $out"
    wrk_us="$(echo "$out" | awk '/^WRKCPU/ {print ($2 + $3) * 1e6}')"
    printf '%-10s req/s=%6d ' "$host" $((requests / seconds))
    join "$work/cpu.before" "$work/cpu.after" | awk -v r="$requests" -v w="$wrk_us" -v hz="$hz" '
        {d = ($3 - $2) * 1e6 / hz / r; if (d > 0.3) printf "%s=%.1f ", $1, d}
        END {printf "wrk=%.1f (µs of CPU per request)\n", w / r}'
done
