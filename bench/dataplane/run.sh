#!/usr/bin/env bash
# bench/dataplane/run.sh — Postern's data plane against wireguard-go, all in one run.
#
#   sudo bench/dataplane/run.sh            (T=10 s per iperf3 run; T=20 for steadier figures)
#   SKIP_BUILD=1 T=5 bench/dataplane/run.sh
#
# Two network namespaces joined by a veth (A 198.19.100.2, B 198.19.100.1); the tunnel is
# 198.19.200.2 (A) <-> 198.19.200.1 (B), MTU 1420. iperf3 clients and the request/response
# client run in A, servers in B. Measured, in this order, in the same run:
#
#   veth                      no tunnel: what the two namespaces do without WireGuard
#   wireguard-go <-> wg-go    the named peer: stock WireGuard in userspace (Debian's wireguard-go)
#   postern --tun <-> wg-go   postern kernel mode (TUN + offload) in A, wireguard-go in B
#   postern --tun --no-offload <-> wg-go   the same, packet-by-packet TUN I/O
#   postern userspace <-> wg-go   postern without TUN in A; iperf3 goes through --forward
#   postern --tun <-> postern --tun
#
# For each: TCP throughput with iperf3 (1 stream A->B, 4 streams A->B, 1 stream B->A with -R),
# round-trip latency (ping, where there is a kernel interface; and one-byte TCP
# request/response on one connection, p50 and p99), and the CPU time of the tunnel daemon
# on each side during the 1-stream run, in % of one core. Prints a markdown table with
# ratios to wireguard-go <-> wireguard-go.
#
# Needs root, iperf3, wireguard-go, wg, ping, python3, and cargo (unless SKIP_BUILD=1 with a
# release build in target/release). Leaves nothing behind: daemons are killed by pid and the
# namespaces deleted, also on Ctrl-C.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
T="${T:-10}"
RR_COUNT="${RR_COUNT:-2000}"
HELPER="$HERE/helper.py"

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces, TUN devices): sudo $0" >&2; exit 1; }
for tool in iperf3 wireguard-go wg ping python3 ip; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found: run scripts/install-deps (python3: apt-get install python3)" >&2; exit 1; }
done

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "building postern (release)..." >&2
  (cd "$ROOT" && cargo build --release -p postern >&2)
fi
POSTERN="${POSTERN:-$ROOT/target/release/postern}"
[ -x "$POSTERN" ] || { echo "run.sh: $POSTERN missing: build it or unset SKIP_BUILD" >&2; exit 1; }

ST="$(mktemp -d /tmp/postern-bench.XXXXXX)"
NSA="pb$$-a" NSB="pb$$-b"
WGA="pbwa$$" WGB="pbwb$$"   # wireguard-go names are machine-wide (UAPI sockets)
PIDS=()

nsx() { local n="$1"; shift; ip netns exec "$n" "$@"; }

cleanup() {
  set +e
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for n in "$NSA" "$NSB"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$n" 2>/dev/null
  done
  rm -f "/var/run/wireguard/$WGA.sock" "/var/run/wireguard/$WGB.sock"
  rm -rf "$ST"
  true
}
trap cleanup EXIT

# ---------------------------------------------------------------- topology and keys
for n in "$NSA" "$NSB"; do
  ip netns add "$n"
  nsx "$n" ip link set lo up
  nsx "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip link add name eth0 netns "$NSA" type veth peer name eth0 netns "$NSB"
nsx "$NSA" ip addr add 198.19.100.2/24 dev eth0; nsx "$NSA" ip link set eth0 up
nsx "$NSB" ip addr add 198.19.100.1/24 dev eth0; nsx "$NSB" ip link set eth0 up
( umask 077; wg genkey >"$ST/a.key"; wg genkey >"$ST/b.key" )
wg pubkey <"$ST/a.key" >"$ST/a.pub"; wg pubkey <"$ST/b.key" >"$ST/b.pub"

# ---------------------------------------------------------------- daemons
LAST_PID=""
start_wggo() { # ns ifname address peer-pub peer-allowed [endpoint]
  local ns="$1" ifn="$2" addr="$3" pub="$4" allowed="$5" endpoint="${6:-}" key i
  key="$ST/b.key"; [ "$ns" = "$NSA" ] && key="$ST/a.key"
  ip netns exec "$ns" wireguard-go -f "$ifn" >"$ST/$ifn.log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  for i in $(seq 100); do [ -S "/var/run/wireguard/$ifn.sock" ] && break; sleep 0.05; done
  [ -S "/var/run/wireguard/$ifn.sock" ] || { echo "wireguard-go $ifn did not start:"; cat "$ST/$ifn.log"; exit 1; } >&2
  local port=51820; [ "$ns" = "$NSA" ] && port=51821
  nsx "$ns" wg set "$ifn" private-key "$key" listen-port "$port" peer "$pub" allowed-ips "$allowed" \
    ${endpoint:+endpoint "$endpoint"}
  nsx "$ns" ip addr add "$addr" dev "$ifn"
  nsx "$ns" ip link set "$ifn" mtu 1420 up
}

write_conf() { # file key address listen-port peer-pub allowed [endpoint]
  {
    echo "[Interface]"
    echo "PrivateKey = $(cat "$2")"
    echo "Address = $3"
    [ -n "$4" ] && echo "ListenPort = $4"
    echo
    echo "[Peer]"
    echo "PublicKey = $5"
    echo "AllowedIPs = $6"
    [ -n "${7:-}" ] && echo "Endpoint = $7"
  } >"$1"
  chmod 600 "$1"
}

start_postern() { # ns conf log args...
  local ns="$1" conf="$2" log="$3" i; shift 3
  ip netns exec "$ns" "$POSTERN" wg up "$conf" "$@" >"$log" 2>&1 &
  LAST_PID=$!; PIDS+=("$LAST_PID")
  for i in $(seq 200); do grep -q " ready" "$log" 2>/dev/null && return 0; sleep 0.05; done
  echo "postern did not start:" >&2; cat "$log" >&2; exit 1
}

stop_daemons() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# ---------------------------------------------------------------- measuring
ticks() { # pid -> utime+stime in clock ticks (0 if none)
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0
}
HZ="$(getconf CLK_TCK)"
cpu_pct() { # ticks-before ticks-after seconds
  awk -v d=$(($2 - $1)) -v hz="$HZ" -v t="$3" 'BEGIN{printf "%.0f", d/hz/t*100}'
}

iperf_gbps() { # out-file args...
  local out="$1"; shift
  if nsx "$NSA" iperf3 -J "$@" >"$out" 2>&1; then python3 "$HELPER" iperf-gbps "$out"; else echo "fail"; fi
}

RESULTS="$ST/results.tsv"; : >"$RESULTS"
measure() { # label host iperf-port rr-port ping-target|- pidA|- pidB|-
  local label="$1" host="$2" port="$3" rrport="$4" ping_target="$5" pida="$6" pidb="$7"
  local srv rr one four rev ping_ms rrline a0 a1 b0 b1 cpua=- cpub=-
  ip netns exec "$NSB" iperf3 -s -p 5201 >/dev/null 2>&1 &
  srv=$!
  ip netns exec "$NSB" python3 "$HELPER" rr-serve 0.0.0.0 7001 >/dev/null 2>&1 &
  rr=$!
  sleep 0.5
  # The request/response client also warms the path up (handshake) before anything is timed.
  rrline="$(nsx "$NSA" python3 "$HELPER" rr-client "$host" "$rrport" "$RR_COUNT" 2>/dev/null || echo "fail fail fail")"
  ping_ms="n/a"
  if [ "$ping_target" != "-" ]; then
    nsx "$NSA" ping -q -c 200 -i 0.005 "$ping_target" >"$ST/ping.txt" 2>&1 || true
    ping_ms="$(python3 "$HELPER" ping-avg-ms "$ST/ping.txt")"
  fi
  [ "$pida" != "-" ] && a0="$(ticks "$pida")"
  [ "$pidb" != "-" ] && b0="$(ticks "$pidb")"
  one="$(iperf_gbps "$ST/one.json" -c "$host" -p "$port" -t "$T")"
  [ "$pida" != "-" ] && { a1="$(ticks "$pida")"; cpua="$(cpu_pct "$a0" "$a1" "$T")"; }
  [ "$pidb" != "-" ] && { b1="$(ticks "$pidb")"; cpub="$(cpu_pct "$b0" "$b1" "$T")"; }
  four="$(iperf_gbps "$ST/four.json" -c "$host" -p "$port" -t "$T" -P 4)"
  rev="$(iperf_gbps "$ST/rev.json" -c "$host" -p "$port" -t "$T" -R)"
  kill "$srv" "$rr" 2>/dev/null || true; wait "$srv" "$rr" 2>/dev/null || true
  read -r p50 _mean p99 <<<"$rrline"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$one" "$four" "$rev" "$ping_ms" "$p50" "$p99" "$cpua" "$cpub" >>"$RESULTS"
  printf '%-36s 1x %s  4x %s  rev %s Gbit/s  ping %s ms  rr p50 %s us p99 %s us  cpu A %s%% B %s%%\n' \
    "$label" "$one" "$four" "$rev" "$ping_ms" "$p50" "$p99" "$cpua" "$cpub" >&2
}

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "measuring, $T s per iperf3 run..." >&2

# 1. plain veth
measure "veth (no tunnel)" 198.19.100.1 5201 7001 198.19.100.1 - -

# 2. wireguard-go <-> wireguard-go (B, the responder, first)
start_wggo "$NSB" "$WGB" 198.19.200.1/24 "$(cat "$ST/a.pub")" 198.19.200.2/32; PB=$LAST_PID
start_wggo "$NSA" "$WGA" 198.19.200.2/24 "$(cat "$ST/b.pub")" 198.19.200.1/32 198.19.100.1:51820; PA=$LAST_PID
measure "wireguard-go <-> wireguard-go" 198.19.200.1 5201 7001 198.19.200.1 "$PA" "$PB"
stop_daemons

# 3. postern --tun <-> wireguard-go
write_conf "$ST/pa.conf" "$ST/a.key" 198.19.200.2/24 "" "$(cat "$ST/b.pub")" 198.19.200.1/32 198.19.100.1:51820
start_wggo "$NSB" "$WGB" 198.19.200.1/24 "$(cat "$ST/a.pub")" 198.19.200.2/32; PB=$LAST_PID
start_postern "$NSA" "$ST/pa.conf" "$ST/pa.log" --tun pst0; PA=$LAST_PID
measure "postern --tun <-> wireguard-go" 198.19.200.1 5201 7001 198.19.200.1 "$PA" "$PB"
stop_daemons

# 4. the same without offload
start_wggo "$NSB" "$WGB" 198.19.200.1/24 "$(cat "$ST/a.pub")" 198.19.200.2/32; PB=$LAST_PID
start_postern "$NSA" "$ST/pa.conf" "$ST/pa.log" --tun pst0 --no-offload; PA=$LAST_PID
measure "postern --tun --no-offload <-> wg-go" 198.19.200.1 5201 7001 198.19.200.1 "$PA" "$PB"
stop_daemons

# 5. postern userspace <-> wireguard-go, through --forward
write_conf "$ST/pu.conf" "$ST/a.key" 198.19.200.2/32 "" "$(cat "$ST/b.pub")" 198.19.200.0/24 198.19.100.1:51820
start_wggo "$NSB" "$WGB" 198.19.200.1/24 "$(cat "$ST/a.pub")" 198.19.200.2/32; PB=$LAST_PID
start_postern "$NSA" "$ST/pu.conf" "$ST/pu.log" \
  --forward tcp:127.0.0.1:15201:198.19.200.1:5201 --forward tcp:127.0.0.1:17001:198.19.200.1:7001; PA=$LAST_PID
measure "postern userspace <-> wireguard-go" 127.0.0.1 15201 17001 - "$PA" "$PB"
stop_daemons

# 6. postern --tun <-> postern --tun
write_conf "$ST/pb.conf" "$ST/b.key" 198.19.200.1/24 51820 "$(cat "$ST/a.pub")" 198.19.200.2/32
start_postern "$NSB" "$ST/pb.conf" "$ST/pb.log" --tun pst0; PB=$LAST_PID
start_postern "$NSA" "$ST/pa.conf" "$ST/pa.log" --tun pst0; PA=$LAST_PID
measure "postern --tun <-> postern --tun" 198.19.200.1 5201 7001 198.19.200.1 "$PA" "$PB"
stop_daemons

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- the table
echo
echo "Data plane, $(date -u +%F), $T s per iperf3 run; $(nproc) cores ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo "iperf3 $(iperf3 --version | head -1 | awk '{print $2}'), wireguard-go $(wireguard-go --version | head -1 | awk '{print $2}'), postern $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'); load average at start $LOAD_START, at end $LOAD_END"
echo
echo "| path (A <-> B) | TCP 1 stream Gbit/s | x wg-go | TCP 4 streams | x wg-go | TCP B->A | x wg-go | ping RTT ms | TCP RR p50 / p99 us | CPU A % | CPU B % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '
  function ratio(v, base) { return (v ~ /^[0-9.]+$/ && base > 0) ? sprintf("%.2f", v / base) : "-" }
  NR == FNR { if ($1 ~ /^wireguard-go/) { b1 = $2; b4 = $3; br = $4 } next }
  { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n", $1, $2, ratio($2, b1), $3, ratio($3, b4), $4, ratio($4, br), $5, $6, $7, $8, $9 }
' "$RESULTS" "$RESULTS"
echo
echo "CPU A / CPU B: the tunnel daemon in namespace A / B (postern or wireguard-go) during the 1-stream run, in % of one core (all threads)."
