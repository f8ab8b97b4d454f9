#!/usr/bin/env bash
# bench/dataplane/userspace.sh POSTERN_BIN: a quick A/B of postern userspace (A) <-> wireguard-go (B)
# only, both directions, with CPU per GB and the UDP counters of both namespaces (RcvbufErrors
# show datagrams the receiver dropped). Env: T (s), PERF=stat|record (perf of postern), TAG,
# PACING=on|off (sets POSTERN_TCP_PACING for postern: the netstack's TCP pacing; unset: the
# build's default), RMEM (both namespaces' rmem_default/max). Each direction's line ends with
# B's and A's UDP datagrams in and RcvbufErrors during that direction.
# REF=1: afterwards the same with wireguard-go in A too (the reference the ratios use).
set -euo pipefail
POSTERN="$1"; T="${T:-8}"; TAG="${TAG:-x}"
ST="$(mktemp -d /tmp/mpus.XXXXXX)"; NSA="mp$$a"; NSB="mp$$b"; WGB="mpwb$$"; WGA="mpwa$$"; PIDS=()
nsx() { local n="$1"; shift; ip netns exec "$n" "$@"; }
cleanup() { set +e; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3
  for n in "$NSA" "$NSB"; do for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done; ip netns del "$n" 2>/dev/null; done
  rm -f "/var/run/wireguard/$WGB.sock" "/var/run/wireguard/$WGA.sock"; }
trap cleanup EXIT
for n in "$NSA" "$NSB"; do ip netns add "$n"; nsx "$n" ip link set lo up; [ -n "${RMEM:-}" ] && nsx "$n" sysctl -qw net.core.rmem_default=$RMEM net.core.rmem_max=$RMEM; done
ip link add name eth0 netns "$NSA" type veth peer name eth0 netns "$NSB"
nsx "$NSA" ip addr add 198.19.100.2/24 dev eth0; nsx "$NSA" ip link set eth0 up
nsx "$NSB" ip addr add 198.19.100.1/24 dev eth0; nsx "$NSB" ip link set eth0 up
( umask 077; wg genkey >"$ST/a.key"; wg genkey >"$ST/b.key" ); wg pubkey <"$ST/a.key" >"$ST/a.pub"; wg pubkey <"$ST/b.key" >"$ST/b.pub"
ip netns exec "$NSB" wireguard-go -f "$WGB" >"$ST/wg.log" 2>&1 & PIDS+=($!); PB=$!
for i in $(seq 100); do [ -S "/var/run/wireguard/$WGB.sock" ] && break; sleep 0.05; done
nsx "$NSB" wg set "$WGB" private-key "$ST/b.key" listen-port 51820 peer "$(cat $ST/a.pub)" allowed-ips 198.19.200.2/32
nsx "$NSB" ip addr add 198.19.200.1/24 dev "$WGB"; nsx "$NSB" ip link set "$WGB" mtu 1420 up
printf '[Interface]\nPrivateKey = %s\nAddress = 198.19.200.2/32\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.19.200.0/24\nEndpoint = 198.19.100.1:51820\n' "$(cat $ST/a.key)" "$(cat $ST/b.pub)" >"$ST/pu.conf"; chmod 600 "$ST/pu.conf"
[ -n "${PACING:-}" ] && export POSTERN_TCP_PACING="$PACING"
ip netns exec "$NSA" "$POSTERN" wg up "$ST/pu.conf" --forward tcp:127.0.0.1:15201:198.19.200.1:5201 >"$ST/pu.log" 2>&1 & PIDS+=($!); PA=$!
for i in $(seq 200); do grep -q " ready" "$ST/pu.log" 2>/dev/null && break; sleep 0.05; done
ip netns exec "$NSB" iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5
nsx "$NSA" iperf3 -c 127.0.0.1 -p 15201 -t 1 >/dev/null 2>&1 || true
# UDP datagrams in and RcvbufErrors of a namespace, from /proc/net/snmp.
udpc() { ip netns exec "$1" awk '/^Udp:/ { if (h) { print $2, $6 } else h = 1 }' /proc/net/snmp; }
# measure LABEL PID_A HOST PORT: iperf3 from A to HOST:PORT both ways, CPU of PID_A and of B's
# wireguard-go, and both namespaces' UDP counters during each direction.
measure() {
  local label="$1" pa="$2" host="$3" port="$4" dir extra t0 t1 w0 w1 bi0 be0 ai0 ae0 bi1 be1 ai1 ae1 udp PP
  for dir in fwd rev; do
    extra=""; [ $dir = rev ] && extra="-R"
    read -r bi0 be0 < <(udpc "$NSB"); read -r ai0 ae0 < <(udpc "$NSA")
    t0=$(awk '{print $14+$15}' /proc/$pa/stat); w0=$(awk '{print $14+$15}' /proc/$PB/stat)
    if [ "${PERF:-}" = record ]; then perf record -g -o /tmp/perf.$TAG.$dir.data -p $pa -- sleep $((T-1)) >/dev/null 2>&1 & PP=$!; fi
    if [ "${PERF:-}" = stat ]; then perf stat -e task-clock,context-switches,cycles,instructions -p $pa -o /tmp/pstat.$TAG.$dir -- sleep $((T-1)) >/dev/null 2>&1 & PP=$!; fi
    nsx "$NSA" iperf3 -J -c "$host" -p "$port" -t "$T" $extra >"$ST/$dir.json" 2>&1 || true
    [ -n "${PERF:-}" ] && wait $PP || true
    t1=$(awk '{print $14+$15}' /proc/$pa/stat); w1=$(awk '{print $14+$15}' /proc/$PB/stat)
    read -r bi1 be1 < <(udpc "$NSB"); read -r ai1 ae1 < <(udpc "$NSA")
    udp="B udp in $((bi1-bi0)) rcvbuf-err $((be1-be0)), A udp in $((ai1-ai0)) rcvbuf-err $((ae1-ae0))"
    python3 - "$ST/$dir.json" $((t1-t0)) $((w1-w0)) $T $dir "$label" "$udp" <<'PY'
import json,sys
j=json.load(open(sys.argv[1])); e=j["end"]
bps=e["sum_received"]["bits_per_second"]; by=e["sum_received"]["bytes"]; rt=e["sum_sent"].get("retransmits","-")
pa=int(sys.argv[2])/100; pb=int(sys.argv[3])/100; T=float(sys.argv[4])
print(f"{sys.argv[6]} {sys.argv[5]}: {bps/1e9:.3f} Gbit/s  A {pa/T*100:.0f}% ({pa/(by/1e9):.2f} cpu-s/GB)  wg-go B {pb/T*100:.0f}%  retr {rt}  {sys.argv[7]}")
PY
  done
}
measure "$TAG postern${PACING:+ pacing=$PACING}" "$PA" 127.0.0.1 15201
echo "B udp: $(ip netns exec $NSB awk '/^Udp:/' /proc/net/snmp | tail -1)"; echo "A udp: $(ip netns exec $NSA awk '/^Udp:/' /proc/net/snmp | tail -1)"
kill $PA; sleep 1; grep -i "counter\|drop\|stat" "$ST/pu.log" | tail -5 || true
if [ -n "${REF:-}" ]; then
  # The reference in the same namespaces: wireguard-go in A too (same key, so B's peer
  # entry fits; B learns the new endpoint from the first authenticated packet).
  ip netns exec "$NSA" wireguard-go -f "$WGA" >"$ST/wga.log" 2>&1 & PIDS+=($!); PR=$!
  for i in $(seq 100); do [ -S "/var/run/wireguard/$WGA.sock" ] && break; sleep 0.05; done
  nsx "$NSA" wg set "$WGA" private-key "$ST/a.key" peer "$(cat $ST/b.pub)" allowed-ips 198.19.200.0/24 endpoint 198.19.100.1:51820
  nsx "$NSA" ip addr add 198.19.200.2/24 dev "$WGA"; nsx "$NSA" ip link set "$WGA" mtu 1420 up
  nsx "$NSA" iperf3 -c 198.19.200.1 -p 5201 -t 1 >/dev/null 2>&1 || true
  measure "$TAG wg-go<->wg-go" "$PR" 198.19.200.1 5201
fi
