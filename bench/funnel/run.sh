#!/usr/bin/env bash
# Ingress benchmark: funnels versus direct, rathole and bore (issue 8, docs/benchmarks.md,
# section "Ingress: funnels versus direct, rathole and bore").
#
# HOW TO RUN (as root: wrk runs in a private mount namespace that maps the funnel hostnames
# to 127.0.0.1 in its own /etc/hosts; nothing on the machine is changed but a TUN device
# that lives as long as the run). About 11 minutes with the defaults (10 with
# WG_STANDIN=0); the machine should be as quiet as possible.
#
#     sudo bench/funnel/run.sh                  # builds the release ingress, then measures
#     SKIP_BUILD=1 T=10 ROUNDS=2 sudo -E bench/funnel/run.sh --out /tmp/funnel.md
#
# Options and environment:
#   --out FILE     also write the result tables (markdown) to FILE
#   --mesh         add the funnels over the mesh (ingress -> its embedded node ->
#                  WireGuard -> a `postern up` node -> origin), the product's real path:
#                  a postern-coord, an ingress with a [node] section, a node that opens
#                  an HTTP and a TCP funnel with `postern funnel` (see MESH below)
#   T=10           seconds per measurement (wrk and iperf3)
#   ROUNDS=2       rounds; round 2 runs the variants in reverse order (ABBA) so that a
#                  drift in the machine's load does not favour one variant
#   GATE_PAIRS=4 GATE_T=5   after the rounds, for EVERY gate, this many back-to-back
#                  pairs of GATE_T-second runs, funnel without and with the gate
#                  (alternating which goes first; the pairs of the gates interleaved):
#                  each gate's cost is the median of the ratios within its pairs, reported
#                  with their range. One run's pairs resolve about ±3 %; pool several
#                  runs' output with bench/funnel/pairs.py (ratio of the pooled means and
#                  a 95 % interval). bench/funnel/process_cpu.sh, against a HOLD=1 run,
#                  gives every process's CPU per request.
#   GATES=oidc,mtls   only these gates in the pairs (any of webhook, ip, jwt, oidc, rate,
#                  mtls; default all); with ROUNDS=0 only these pairs are measured. With
#                  --mesh, `webhook` also pairs the funnel over the mesh with and without
#                  the GitHub gate (a second origin on 18081, funnelled by the node with
#                  `postern funnel 18081 --name meshgated --verify-webhook github`)
#   CONNS=32 THREADS=2   wrk connections and threads
#   NEW_CONN=1     every request on a new TCP connection and TLS session (wrk sends
#                  `Connection: close`, oha runs with --disable-keepalive), as from a
#                  webhook sender that connects once per delivery; the default keeps the
#                  connections alive, which leaves the edge's per-request work most exposed
#   PIN=1          the ingress alone on CPU 1, everything else (wrk, oha, the origin, the
#                  relays, the mesh node) on CPU 0: the ingress is then the bottleneck and
#                  has its core to itself, so a gate's cost shows as requests/s without
#                  the noise of three processes sharing two cores (for the gate pairs;
#                  the ingress runs one tokio worker then). Needs 2 CPUs. The funnel over
#                  the mesh cannot be measured so: its node shares CPU 0 with wrk and the
#                  origin, and that core, not the ingress, is then the bottleneck; run the
#                  mesh pairs without PIN (everything on both cores, as in the rounds).
#   WG_STANDIN=1   also measure the stand-in for the mesh hop (below); 0 to skip it
#   MESH_ONLY=1    with --mesh: only direct, the ungated funnel, rathole, the edge's TCP
#                  funnel and the mesh rows (a quick A/B of the mesh path; GATE_PAIRS=0 too)
#   TCP_PAIRS=0 TCP_T=5   with --mesh: after the rounds, this many back-to-back pairs of
#                  TCP_T-second runs, the TCP funnel over the mesh and encrypted rathole (the
#                  order alternating), with the two sides of each on a core of their own,
#                  as on two machines: the public side (iperf3's client, the ingress,
#                  rathole's server) on CPU 0, the private side (the node, rathole's client,
#                  iperf3's server) on CPU 1. Needs 2 CPUs. The median and range of the
#                  per-pair ratios are reported. Each pair is an upload (the public client
#                  sends) and then a download pair (`iperf3 -R`: the private side sends).
#   PERF_DIR=DIR   with --mesh: `perf stat` the ingress and the node during each TCP mesh run
#   HOLD=1         set everything up, print the ports and pids, and wait (no measurement):
#                  for profiling by hand (the TCP ports need no name; the HTTPS ones do)
#   SKIP_BUILD=1   do not run `cargo build --release -p postern-ingress -p postern`
#   INGRESS_BIN    the postern-ingress binary (default: $CARGO_TARGET_DIR or target/, release)
#   POSTERN_BIN    the postern binary, for the stand-in (same default place)
#   TOOLS_DIR      where rathole, bore and oha are installed if missing (default
#                  target/bench-tools)
#
# What it measures, all in one run (every figure is compared within the run):
#   HTTP: requests/s and p50/p99 latency of GitHub-webhook-shaped POSTs (1 KiB body, a valid
#     X-Hub-Signature-256 computed once, a fresh X-GitHub-Delivery per request; wrk with
#     webhook.lua) against a tiny HTTP/1.1 origin (origin.rs, std only, built with rustc -O):
#       direct HTTP           wrk -> origin
#       direct HTTPS (socat)  wrk -> socat OPENSSL-LISTEN (TLS termination, one process per
#                             connection) -> origin: the cost of TLS alone, no HTTP parsing
#       funnel, no gate       wrk -> postern-ingress (TLS, HTTP, audit) -> origin
#       funnel, GitHub gate   the same plus the webhook gate (HMAC + replay cache)
#       funnel, IP gate       an `ip` gate allowing 127.0.0.0/8
#       funnel, JWT gate      a `jwt` gate (ES256; the JWKS served on loopback by python's
#                             http.server, the token made once by the script with openssl)
#       funnel, OIDC gate     an `oidc` login gate; every request carries a valid session
#                             cookie, minted with the gate's own cookie code and the
#                             funnel's session key by ingress/examples/bench_session_cookie.rs
#                             (no IdP is involved: the session check is what every request
#                             after a login costs)
#       funnel, rate limits   no gate, a per-client-address and a per-funnel token bucket
#                             too large to refuse anything (the buckets' own cost)
#       funnel, mTLS gate     an `mtls` gate; driven by oha (wrk presents no client
#                             certificate) with a client certificate from a CA the script
#                             makes, and compared with the ungated funnel driven by oha too
#     Every request of every variant carries the same headers (signature, bearer token,
#     session cookie) whether its funnel reads them or not.
#     plus the ingress's CPU time per request (from /proc), which the machine's load
#     disturbs much less than requests/s.
#   TCP: iperf3 throughput (1 stream, client -> server) to an iperf3 server:
#       direct, socat TCP relay (plain, one hop), the ingress's [[tcp_funnel]], rathole 0.5
#       with its Noise transport (encrypted between its server and client), bore
#       (unencrypted).
#   The edge only: the ingress forwards to the origin over plain TCP on loopback; the hop
#   over the mesh (embedded node -> WireGuard -> node) is only in the --mesh variants.
#   MESH (--mesh): postern-coord on 127.0.0.1:18510 (funnel domain bench.test, TCP funnel
#   ports 18508-18509, a policy that lets the bench user funnel any port ungated), the
#   same ingress process with a [node] section (ingress auth key), and `postern up` for a
#   node "bench-node" that runs `postern funnel 18080 --name mesh --bg`, `postern funnel
#   18081 --name meshgated --verify-webhook github --bg` (a second origin: one funnel per
#   port) and `postern funnel --tcp 18201 --bg`: requests to https://mesh.bench.test go ingress -> embedded node
#   (userspace WireGuard + netstack, a funnel-hop stream per request) -> loopback UDP ->
#   the node's engine and netstack -> its funnel acceptor -> the origin; iperf3 to the TCP
#   funnel's public port the same way. CPU is the ingress's plus the node's.
#   Stand-in for the mesh hop (WG_STANDIN=1, the default): the same funnels, but their
#   target is `postern wg up --forward` (userspace WireGuard and netstack, as the ingress's
#   embedded node will be), whose tunnel reaches `postern wg up --tun` (a TUN device
#   pfbench0, 10.77.0.2), behind which a second origin and iperf3 server listen. It has the
#   mesh's encryption and netstack but an extra loopback hop (ingress -> forward process)
#   and not the funnel hop's handshake; it is not the real path.
#
# Needs: wrk, iperf3, socat, openssl, jq, python3, rustc, cargo (apt-get installs the Debian
# ones if missing, saying so; `cargo install` installs rathole, bore and oha into TOOLS_DIR).
# Ports used on 127.0.0.1: 18080 18201 18333 18443 18444 18500-18512, bore's 7835, UDP
# 51871-51872 (WireGuard of the stand-in); on 10.77.0.2 (pfbench0): 18080 18202.
# Everything started is killed by pid on exit and the work directory is removed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# One run at a time on a machine: every run uses the same fixed ports.
exec 9>/tmp/postern-funnel-bench.lock
if ! flock --nonblock 9; then
    echo "[funnel-bench] another run holds /tmp/postern-funnel-bench.lock; waiting for it" >&2
    flock 9
fi
repo="$(cd "$here/../.." && pwd)"
T="${T:-10}"
ROUNDS="${ROUNDS:-2}"
GATE_PAIRS="${GATE_PAIRS:-4}"
GATE_T="${GATE_T:-5}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-2}"
NEW_CONN="${NEW_CONN:-0}"
TOOLS_DIR="${TOOLS_DIR:-$repo/target/bench-tools}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
INGRESS_BIN="${INGRESS_BIN:-$target_dir/release/postern-ingress}"
POSTERN_BIN="${POSTERN_BIN:-$target_dir/release/postern}"
WG_STANDIN="${WG_STANDIN:-1}"
PIN="${PIN:-0}"
TCP_PAIRS="${TCP_PAIRS:-0}"
TCP_T="${TCP_T:-5}"
if [ "$TCP_PAIRS" != 0 ] && [ "$(nproc --all)" -lt 2 ]; then
    echo "run.sh: TCP_PAIRS needs 2 CPUs" >&2
    exit 2
fi
pin_ingress=()
if [ "$PIN" = 1 ] && [ "$(nproc --all)" -lt 2 ]; then
    echo "run.sh: PIN=1 needs 2 CPUs" >&2
    exit 2
fi
gate_keys=(funnel_gated funnel_ip funnel_jwt funnel_oidc funnel_rate funnel_mtls)
if [ -n "${GATES:-}" ]; then
    gate_keys=()
    for gate in ${GATES//,/ }; do
        case "$gate" in
        webhook) gate_keys+=(funnel_gated) ;;
        ip | jwt | oidc | rate | mtls) gate_keys+=("funnel_$gate") ;;
        *) echo "run.sh: GATES: unknown gate $gate (webhook, ip, jwt, oidc, rate, mtls)" >&2; exit 2 ;;
        esac
    done
fi
out_file=""
mesh=0

while [ $# -gt 0 ]; do
    case "$1" in
    --out) out_file="$2"; shift 2 ;;
    --mesh) mesh=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$mesh" = 1 ] && [[ " ${gate_keys[*]} " == *" funnel_gated "* ]]; then
    gate_keys+=(funnel_mesh_gated) # the GitHub gate on the product's path too
fi

# Ports.
P_ORIGIN=18080
P_ORIGIN_MESH_GATED=18081 # --mesh: the second origin, behind the node's gated funnel
P_IPERF=18201
P_RATHOLE_CTL=18333
P_SOCAT_TLS=18443
P_INGRESS=18444
P_TCP_FUNNEL=18501
P_SOCAT_TCP=18502
P_RATHOLE=18503
P_BORE=18504
P_BORE_CTL=7835 # fixed in bore
P_WG_FWD_TCP=18505    # postern wg (userspace) --forward -> 10.77.0.2:P_WG_IPERF
P_TCP_FUNNEL_WG=18506 # ingress [[tcp_funnel]] -> P_WG_FWD_TCP
P_WG_FWD_HTTP=18507   # postern wg (userspace) --forward -> 10.77.0.2:P_ORIGIN
P_WG_IPERF=18202
WG_A_UDP=51871
WG_B_UDP=51872
WG_A_IP=10.77.0.1
WG_B_IP=10.77.0.2
WG_DEV=pfbench0
P_COORD=18510
P_JWKS=18511
P_IDP=18512 # the OIDC gate's issuer: never contacted while requests carry a session
MESH_TCP_PORTS=18508-18509
COORD_BIN="${COORD_BIN:-$target_dir/release/postern-coord}"

say() { echo "[funnel-bench $(date -u +%H:%M:%S)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup (by pid)
work=""
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        # socat forks a child per connection: end those children first, by parent pid.
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$work" ] && [ -d "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME CMD...: runs CMD in the background, logs in $work/NAME.log
    local name="$1"; shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    eval "pid_$name=$!"
}

wait_port() { # wait_port PORT NAME: until 127.0.0.1:PORT accepts a connection (10 s)
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    say "$2 did not listen on port $1 within 10 s; its log:"
    tail -n 20 "$work/$2.log" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || die "run as root (wrk runs in a private mount namespace with its own /etc/hosts)"

need_apt=()
for tool in wrk iperf3 socat openssl jq python3 unshare curl; do
    command -v "$tool" >/dev/null || need_apt+=("$tool")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    pkgs=()
    for tool in "${need_apt[@]}"; do
        case "$tool" in unshare) pkgs+=(util-linux) ;; python3) pkgs+=(python3) ;; *) pkgs+=("$tool") ;; esac
    done
    say "missing ${need_apt[*]}: installing Debian packages ${pkgs[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
fi
command -v rustc >/dev/null || die "rustc is needed to build the origin (bench/funnel/origin.rs)"

export PATH="$TOOLS_DIR/bin:$PATH"
if ! command -v rathole >/dev/null; then
    # 0.5.0 does not build with --locked on current toolchains; only the features used here.
    say "rathole missing: cargo install rathole@0.5.0 (server, client, noise) into $TOOLS_DIR (a few minutes)"
    cargo install --root "$TOOLS_DIR" rathole@0.5.0 --no-default-features --features server,client,noise >&2
fi
if ! command -v bore >/dev/null; then
    say "bore missing: cargo install bore-cli into $TOOLS_DIR (a few minutes)"
    cargo install --root "$TOOLS_DIR" bore-cli >&2
fi
if ! command -v oha >/dev/null; then
    # A load generator that presents a TLS client certificate (--cert/--key), for mTLS.
    say "oha missing: cargo install oha@1.16.0 into $TOOLS_DIR (a few minutes)"
    cargo install --root "$TOOLS_DIR" oha@1.16.0 --locked >&2
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    packages=()
    if [ "$WG_STANDIN" = 1 ] || [ "$mesh" = 1 ]; then packages+=(-p postern); fi
    if [ "$mesh" = 1 ]; then packages+=(-p postern-coord); fi
    # The ingress and the session-cookie helper (an example: ingress/examples/) in one
    # build, so that the ingress is not built twice with two feature sets.
    say "building the release binaries (postern-ingress and its bench_session_cookie example ${packages[*]})"
    (cd "$repo" && cargo build --release -p postern-ingress --bins --example bench_session_cookie >&2)
    if [ "${#packages[@]}" -gt 0 ]; then (cd "$repo" && cargo build --release "${packages[@]}" >&2); fi
fi
COOKIE_BIN="${COOKIE_BIN:-$target_dir/release/examples/bench_session_cookie}"
[ -x "$INGRESS_BIN" ] || die "no ingress binary at $INGRESS_BIN (build it, or set INGRESS_BIN)"
[ -x "$COOKIE_BIN" ] || die "no session-cookie helper at $COOKIE_BIN (cargo build --release -p postern-ingress --example bench_session_cookie, or set COOKIE_BIN)"
if [ "$mesh" = 1 ]; then
    [ -x "$POSTERN_BIN" ] || die "no postern binary at $POSTERN_BIN (build it, or set POSTERN_BIN)"
    [ -x "$COORD_BIN" ] || die "no postern-coord binary at $COORD_BIN (build it, or set COORD_BIN)"
fi
if [ "$WG_STANDIN" = 1 ]; then
    [ -x "$POSTERN_BIN" ] || die "no postern binary at $POSTERN_BIN (build it, set POSTERN_BIN, or WG_STANDIN=0)"
    command -v wg >/dev/null || die "the stand-in needs wg (wireguard-tools) for its keys, or WG_STANDIN=0"
    if ip link show "$WG_DEV" >/dev/null 2>&1; then
        die "a device $WG_DEV exists already (left by an earlier run?): ip link del $WG_DEV"
    fi
fi

for port in $P_ORIGIN $P_IPERF $P_RATHOLE_CTL $P_SOCAT_TLS $P_INGRESS $P_TCP_FUNNEL \
    $P_SOCAT_TCP $P_RATHOLE $P_BORE $P_BORE_CTL $P_WG_FWD_TCP $P_TCP_FUNNEL_WG $P_WG_FWD_HTTP \
    $P_COORD 18508 18509 $P_JWKS $P_IDP $P_ORIGIN_MESH_GATED; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is in use; stop what listens there (ss -ltnp 'sport = :$port')"
    fi
done

work="$(mktemp -d /tmp/funnel-bench.XXXXXX)"
say "work directory $work"

# ---------------------------------------------------------------- material
rustc --edition 2021 -O "$here/origin.rs" -o "$work/origin"

# A CA and a leaf certificate for the funnel hostnames (the ingress and socat serve it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=postern bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=open.bench.test" -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:open.bench.test,DNS:gated.bench.test,DNS:direct.bench.test,DNS:wg.bench.test,DNS:mesh.bench.test,DNS:meshgated.bench.test,DNS:ip.bench.test,DNS:jwt.bench.test,DNS:rate.bench.test,DNS:oidc.bench.test,DNS:mtls.bench.test\n' >"$work/san.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/leaf.pem" 2>/dev/null
cat "$work/leaf.pem" "$work/ca.pem" >"$work/chain.pem"

# The names wrk connects to, in the /etc/hosts of its private mount namespace.
printf '127.0.0.1 localhost open.bench.test gated.bench.test direct.bench.test wg.bench.test mesh.bench.test meshgated.bench.test ip.bench.test jwt.bench.test rate.bench.test oidc.bench.test mtls.bench.test\n' >"$work/hosts"

# A GitHub-push-shaped 1 KiB body and its signature, computed once.
secret="bench-$(openssl rand -hex 16)"
python3 - "$work/body.json" <<'EOF'
import json, sys
body = {"ref": "refs/heads/main", "before": "0" * 40, "after": "1" * 40,
        "repository": {"id": 1, "full_name": "example/postern-bench", "private": False},
        "pusher": {"name": "bench", "email": "bench@example.com"},
        "commits": [{"id": "1" * 40, "message": "bench " + "x" * 500,
                     "author": {"name": "bench", "email": "bench@example.com"}}]}
text = json.dumps(body)
text += " " * (1024 - len(text)) if len(text) < 1024 else ""
open(sys.argv[1], "w").write(text)
EOF
signature="sha256=$(openssl dgst -sha256 -hmac "$secret" -r <"$work/body.json" | cut -d' ' -f1)"

# An ES256 key, its JWKS (served on loopback) and one token for the JWT gate, made with
# openssl and python's standard library.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/jwt.key" 2>/dev/null
openssl ec -in "$work/jwt.key" -pubout -outform DER -out "$work/jwt.pub.der" 2>/dev/null
mkdir -p "$work/jwks"
python3 - "$work" "$P_JWKS" <<'JWT'
import base64, json, subprocess, sys, time
work, port = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
point = open(f"{work}/jwt.pub.der", "rb").read()[-65:]  # 04 || x || y
jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
       "x": b64(point[1:33]), "y": b64(point[33:])}
open(f"{work}/jwks/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
now = int(time.time())
claims = {"iss": "https://idp.bench.test", "aud": "bench-api", "sub": "bench-client",
          "iat": now, "exp": now + 3600, "scope": "hooks"}
payload = b64(json.dumps(claims).encode())
signing_input = f"{header}.{payload}".encode()
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{work}/jwt.key"],
                     input=signing_input, capture_output=True, check=True).stdout
# DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs) to JWS's raw r || s, 32 bytes each.
def integers(d):
    i, out = 2 if d[1] < 0x80 else 2 + (d[1] & 0x7f), []
    while i < len(d):
        n = d[i + 1]
        out.append(int.from_bytes(d[i + 2:i + 2 + n], "big"))
        i += 2 + n
    return out
r, s = integers(der)
token = f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
open(f"{work}/jwt.token", "w").write(token)
JWT
jwt_token="$(cat "$work/jwt.token")"

# The mTLS gate's CA and a client certificate from it (for oha).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=postern bench client CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$work/client-ca.key" -out "$work/client-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=bench-client" -keyout "$work/client.key" -out "$work/client.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' >"$work/client.ext"
openssl x509 -req -in "$work/client.csr" -CA "$work/client-ca.pem" -CAkey "$work/client-ca.key" \
    -CAcreateserial -days 2 -extfile "$work/client.ext" -out "$work/client.pem" 2>/dev/null

# The OIDC gate's session key (0600, as the ingress makes it) and a session cookie for
# bench@example.com minted from it with the gate's own code.
(umask 077 && head -c 32 /dev/urandom >"$work/oidc-session.key")
session_cookie="__Host-postern-session=$("$COOKIE_BIN" "$work/oidc-session.key" oidc.bench.test bench@example.com 7200)"

# ---------------------------------------------------------------- servers
if [ "$PIN" = 1 ]; then
    # From here on (the tools are built), this shell and everything it starts stay on
    # CPU 0; the ingress alone gets CPU 1.
    taskset -cp 0 $$ >/dev/null
    pin_ingress=(taskset -c 1)
fi
start origin "$work/origin" "127.0.0.1:$P_ORIGIN" 256
wait_port "$P_ORIGIN" origin
start jwks python3 -m http.server "$P_JWKS" --bind 127.0.0.1 --directory "$work/jwks"
wait_port "$P_JWKS" jwks
start iperf3 iperf3 --server --bind 127.0.0.1 --port "$P_IPERF"
wait_port "$P_IPERF" iperf3

start socat_tls socat "OPENSSL-LISTEN:$P_SOCAT_TLS,bind=127.0.0.1,reuseaddr,fork,cert=$work/leaf.pem,key=$work/leaf.key,cafile=$work/ca.pem,verify=0" \
    "TCP:127.0.0.1:$P_ORIGIN,nodelay"
wait_port "$P_SOCAT_TLS" socat_tls
start socat_tcp socat "TCP-LISTEN:$P_SOCAT_TCP,bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:127.0.0.1:$P_IPERF,nodelay"
wait_port "$P_SOCAT_TCP" socat_tcp

cat >"$work/ingress.toml" <<EOF
state_dir = "$work/ingress-state"
audit_log = "$work/audit.jsonl"

[listen]
https = "127.0.0.1:$P_INGRESS"
tcp_port_range = "18500-18509"

[static_cert]
cert = "$work/chain.pem"
key = "$work/leaf.key"

[[funnel]]
hostname = "open.bench.test"
target = "127.0.0.1:$P_ORIGIN"

[[funnel]]
hostname = "gated.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[[funnel.gate]]
verify_webhook = "github"
secret_env = "BENCH_GH_SECRET"

[[funnel]]
hostname = "ip.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[[funnel.gate]]
[funnel.gate.ip]
rules = ["allow 127.0.0.0/8"]

[[funnel]]
hostname = "jwt.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[[funnel.gate]]
[funnel.gate.jwt]
jwks_url = "http://127.0.0.1:$P_JWKS/jwks.json"
issuer = "https://idp.bench.test"
audiences = ["bench-api"]

[[funnel]]
hostname = "oidc.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[[funnel.gate]]
[funnel.gate.oidc]
issuer = "http://127.0.0.1:$P_IDP"
client_id = "bench"
allowed_emails = ["bench@example.com"]
session_key_file = "$work/oidc-session.key"

[[funnel]]
hostname = "mtls.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[[funnel.gate]]
[funnel.gate.mtls]
ca = "$work/client-ca.pem"

[[funnel]]
hostname = "rate.bench.test"
target = "127.0.0.1:$P_ORIGIN"
[funnel.rate_limit]
per_client_ip = { requests = 10000000, per_secs = 1 }
per_funnel = { requests = 10000000, per_secs = 1 }

[[tcp_funnel]]
port = $P_TCP_FUNNEL
target = "127.0.0.1:$P_IPERF"
EOF
if [ "$WG_STANDIN" = 1 ]; then
    cat >>"$work/ingress.toml" <<EOF

[[funnel]]
hostname = "wg.bench.test"
target = "127.0.0.1:$P_WG_FWD_HTTP"

[[tcp_funnel]]
port = $P_TCP_FUNNEL_WG
target = "127.0.0.1:$P_WG_FWD_TCP"
EOF
fi
mkdir -p "$work/ingress-state"
export BENCH_GH_SECRET="$secret" # the gate's secret_env; not on any command line
ingress_key=""
if [ "$mesh" = 1 ]; then
    # The coordination server, its keys and policy, before the ingress that logs in to it.
    coord_state="$work/coord"
    cat >"$work/policy.hujson" <<'POLICY'
{
  "acls": [{"action": "accept", "src": ["bench@example.com"], "dst": ["bench@example.com:*"]}],
  "nodeAttrs": [{"target": ["bench@example.com"], "attr": ["funnel"]}],
  "funnels": [{"src": ["bench@example.com"], "ports": ["*"], "allowUngated": true}],
}
POLICY
    ingress_key="$("$COORD_BIN" keys create --ingress --state-dir "$coord_state")"
    (umask 077 && "$COORD_BIN" keys create --user bench@example.com --state-dir "$coord_state" >"$work/node.authkey")
    start coord env RUST_LOG=warn "$COORD_BIN" serve --state-dir "$coord_state" \
        --listen "127.0.0.1:$P_COORD" --admin-listen 127.0.0.1:0 --policy "$work/policy.hujson" \
        --funnel-domain bench.test --funnel-tcp-ports "$MESH_TCP_PORTS"
    wait_port "$P_COORD" coord
    cat >>"$work/ingress.toml" <<NODE

[node]
coord_url = "http://127.0.0.1:$P_COORD"
auth_key_env = "BENCH_INGRESS_KEY"
state_dir = "$work/ingress-node"
hostname = "bench-ingress"
NODE
fi
start ingress "${pin_ingress[@]}" env RUST_LOG=warn BENCH_INGRESS_KEY="$ingress_key" "$INGRESS_BIN" serve --config "$work/ingress.toml"
wait_port "$P_INGRESS" ingress
wait_port "$P_TCP_FUNNEL" ingress

# rathole: server (the public side) and client (beside the origin), Noise NK transport.
keys="$(rathole --genkey)"
rathole_private="$(echo "$keys" | sed -n '/Private Key/{n;p}')"
rathole_public="$(echo "$keys" | sed -n '/Public Key/{n;p}')"
token="$(openssl rand -hex 16)"
cat >"$work/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$P_RATHOLE_CTL"
default_token = "$token"
[server.transport]
type = "noise"
[server.transport.noise]
local_private_key = "$rathole_private"
[server.services.iperf]
bind_addr = "127.0.0.1:$P_RATHOLE"
EOF
cat >"$work/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$P_RATHOLE_CTL"
default_token = "$token"
[client.transport]
type = "noise"
[client.transport.noise]
remote_public_key = "$rathole_public"
[client.services.iperf]
local_addr = "127.0.0.1:$P_IPERF"
EOF
start rathole_server env RUST_LOG=warn rathole --server "$work/rathole-server.toml"
wait_port "$P_RATHOLE_CTL" rathole_server
start rathole_client env RUST_LOG=warn rathole --client "$work/rathole-client.toml"
wait_port "$P_RATHOLE" rathole_server

# bore: server (public side) and local client; plain TCP.
start bore_server bore server --min-port "$P_BORE" --max-port "$P_BORE" --bind-addr 127.0.0.1
wait_port "$P_BORE_CTL" bore_server
start bore_client bore local "$P_IPERF" --local-host 127.0.0.1 --to 127.0.0.1 --port "$P_BORE"
wait_port "$P_BORE" bore_server

# The stand-in for the mesh hop: B (kernel TUN, the "node") first, its origin and iperf3
# server on B's tunnel address, then A (userspace, the "ingress's node") forwarding into
# the tunnel.
wait_ready() { # wait_ready NAME: until postern logs " ready" (10 s)
    local i
    for i in $(seq 1 100); do
        grep -q " ready" "$work/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    say "$1 did not get ready within 10 s; its log:"
    tail -n 20 "$work/$1.log" >&2 || true
    exit 1
}
wg_conf() { # wg_conf FILE KEY ADDRESS LISTEN_PORT PEER_PUB PEER_ALLOWED PEER_ENDPOINT
    (
        umask 077
        printf '[Interface]\nPrivateKey = %s\nAddress = %s/32\nListenPort = %s\nMTU = 1420\n\n' "$(cat "$2")" "$3" "$4"
        printf '[Peer]\nPublicKey = %s\nAllowedIPs = %s/32\nEndpoint = %s\n' "$5" "$6" "$7"
    ) >"$1"
}
if [ "$WG_STANDIN" = 1 ]; then
    (umask 077 && wg genkey >"$work/wg-a.key" && wg genkey >"$work/wg-b.key")
    wg_conf "$work/$WG_DEV.conf" "$work/wg-b.key" "$WG_B_IP" "$WG_B_UDP" \
        "$(wg pubkey <"$work/wg-a.key")" "$WG_A_IP" "127.0.0.1:$WG_A_UDP"
    wg_conf "$work/wg-a.conf" "$work/wg-a.key" "$WG_A_IP" "$WG_A_UDP" \
        "$(wg pubkey <"$work/wg-b.key")" "$WG_B_IP" "127.0.0.1:$WG_B_UDP"
    start wg_b "$POSTERN_BIN" wg up "$work/$WG_DEV.conf" --tun "$WG_DEV"
    wait_ready wg_b
    start origin_wg "$work/origin" "$WG_B_IP:$P_ORIGIN" 256
    start iperf3_wg iperf3 --server --bind "$WG_B_IP" --port "$P_WG_IPERF"
    sleep 0.5
    start wg_a "$POSTERN_BIN" wg up "$work/wg-a.conf" \
        --forward "tcp:127.0.0.1:$P_WG_FWD_TCP:$WG_B_IP:$P_WG_IPERF" \
        --forward "tcp:127.0.0.1:$P_WG_FWD_HTTP:$WG_B_IP:$P_ORIGIN"
    wait_ready wg_a
    wait_port "$P_WG_FWD_HTTP" wg_a
fi

# The node behind the mesh: logs in, comes up, and funnels the origin and iperf3.
if [ "$mesh" = 1 ]; then
    node_state="$work/node"
    pn() { "$POSTERN_BIN" "$@" --state-dir "$node_state"; }
    pn login --coord "http://127.0.0.1:$P_COORD" --auth-key-file "$work/node.authkey" \
        --hostname bench-node >/dev/null 2>"$work/node-login.log" ||
        { cat "$work/node-login.log" >&2; die "postern login failed"; }
    start node env RUST_LOG=warn "$POSTERN_BIN" up --state-dir "$node_state" --inspect off
    for i in $(seq 1 100); do
        pn status --json 2>/dev/null | jq -e '.peers[] | select(.is_ingress and .online)' >/dev/null && break
        [ "$i" = 100 ] && { tail -n 20 "$work/node.log" >&2; die "the node never saw the ingress online"; }
        sleep 0.1
    done
    mesh_url="$(pn funnel "$P_ORIGIN" --name mesh --bg --json | jq -r .url)"
    [ "$mesh_url" = "https://mesh.bench.test/" ] || die "unexpected funnel URL $mesh_url"
    # The same funnel behind the GitHub gate, on a second origin (one funnel per port).
    start origin_mesh_gated "$work/origin" "127.0.0.1:$P_ORIGIN_MESH_GATED" 256
    wait_port "$P_ORIGIN_MESH_GATED" origin_mesh_gated
    mesh_gated_url="$(pn funnel "$P_ORIGIN_MESH_GATED" --name meshgated --verify-webhook github \
        --secret-env BENCH_GH_SECRET --bg --json | jq -r .url)"
    [ "$mesh_gated_url" = "https://meshgated.bench.test/" ] || die "unexpected funnel URL $mesh_gated_url"
    mesh_tcp_url="$(pn funnel --tcp "$P_IPERF" --bg --json | jq -r .url)"
    P_MESH_TCP="${mesh_tcp_url##*:}"
    say "mesh funnels: $mesh_url and $mesh_tcp_url"
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$P_MESH_TCP") 2>/dev/null && break
        [ "$i" = 100 ] && { tail -n 20 "$work/ingress.log" >&2; die "the ingress never opened the TCP funnel's port $P_MESH_TCP"; }
        sleep 0.1
    done
fi

# ---------------------------------------------------------------- checks before measuring
in_ns() { # runs a command with the bench /etc/hosts
    unshare --mount --propagation private -- sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$work/hosts" "$@"
}
status_of() { # status_of URL [curl args...]
    local url="$1"; shift
    in_ns curl -sk -o /dev/null -w '%{http_code}' -X POST --data-binary "@$work/body.json" \
        -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' "$@" "$url"
}
check() { # check WHAT EXPECTED GOT
    [ "$2" = "$3" ] || die "check failed: $1 gave $3, expected $2"
    say "check: $1 -> $3"
}
check "direct HTTP" 200 "$(status_of "http://direct.bench.test:$P_ORIGIN/hook")"
check "direct HTTPS (socat)" 200 "$(status_of "https://direct.bench.test:$P_SOCAT_TLS/hook")"
check "funnel, no gate" 200 "$(status_of "https://open.bench.test:$P_INGRESS/hook")"
check "funnel, gate, signed" 200 "$(status_of "https://gated.bench.test:$P_INGRESS/hook" \
    -H "X-Hub-Signature-256: $signature" -H "X-GitHub-Delivery: check-1")"
check "funnel, gate, same delivery again (replay)" 403 "$(status_of "https://gated.bench.test:$P_INGRESS/hook" \
    -H "X-Hub-Signature-256: $signature" -H "X-GitHub-Delivery: check-1")"
if [ "$WG_STANDIN" = 1 ]; then
    check "funnel, no gate, via the WireGuard stand-in" 200 "$(status_of "https://wg.bench.test:$P_INGRESS/hook")"
fi
if [ "$mesh" = 1 ]; then
    for i in $(seq 1 100); do
        [ "$(status_of "https://mesh.bench.test:$P_INGRESS/hook")" = 200 ] && break
        sleep 0.1
    done
    check "funnel over the mesh, no gate" 200 "$(status_of "https://mesh.bench.test:$P_INGRESS/hook")"
    check "funnel over the mesh, GitHub gate, signed" 200 "$(status_of "https://meshgated.bench.test:$P_INGRESS/hook" \
        -H "X-Hub-Signature-256: $signature" -H "X-GitHub-Delivery: check-mesh-1")"
    check "funnel over the mesh, GitHub gate, unsigned" 401 "$(status_of "https://meshgated.bench.test:$P_INGRESS/hook" \
        -H "X-GitHub-Delivery: check-mesh-2")"
fi
check "funnel, IP gate" 200 "$(status_of "https://ip.bench.test:$P_INGRESS/hook")"
check "funnel, JWT gate, token" 200 "$(status_of "https://jwt.bench.test:$P_INGRESS/hook" -H "Authorization: Bearer $jwt_token")"
check "funnel, JWT gate, no token" 401 "$(status_of "https://jwt.bench.test:$P_INGRESS/hook")"
check "funnel, OIDC gate, session" 200 "$(status_of "https://oidc.bench.test:$P_INGRESS/hook" -H "Cookie: $session_cookie")"
check "funnel, OIDC gate, no session" 401 "$(status_of "https://oidc.bench.test:$P_INGRESS/hook")"
check "funnel, mTLS gate, client certificate" 200 "$(status_of "https://mtls.bench.test:$P_INGRESS/hook" --cert "$work/client.pem" --key "$work/client.key")"
check "funnel, mTLS gate, no client certificate" 401 "$(status_of "https://mtls.bench.test:$P_INGRESS/hook")"
check "funnel, rate limits" 200 "$(status_of "https://rate.bench.test:$P_INGRESS/hook")"
check "funnel, gate, unsigned" 401 "$(status_of "https://gated.bench.test:$P_INGRESS/hook" \
    -H "X-GitHub-Delivery: check-2")"

if [ -n "${HOLD:-}" ]; then
    # Keep everything running for measuring by hand (perf record, iperf3 -P, ...).
    say "HOLD: ingress pid $pid_ingress${pid_node:+, node pid $pid_node}; iperf3 at 127.0.0.1:$P_IPERF (direct),"
    say "      $P_TCP_FUNNEL (edge TCP funnel), $P_RATHOLE (rathole)${P_MESH_TCP:+, $P_MESH_TCP (TCP funnel over the mesh)}"
    say "      HTTP funnels: https://open.bench.test:$P_INGRESS/hook${mesh_url:+, https://mesh.bench.test:$P_INGRESS/hook}"
    say "      (the hostnames resolve only inside this run's mount namespace); Ctrl-C or kill to stop"
    sleep infinity 9>&- &
    wait $!
fi

# ---------------------------------------------------------------- measuring
results="$work/results.tsv" # kind variant round value...
loads="$work/loads.txt"
: >"$results"
: >"$loads"
load_now() { cut -d' ' -f1 /proc/loadavg >>"$loads"; }
cpu_ticks() { # user+system clock ticks of the given pids
    local total=0 pid
    for pid in "$@"; do
        # fields after the ")" of the command name: utime is the 12th, stime the 13th
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
hz="$(getconf CLK_TCK)"

http_variant() { # http_variant KEY ROUND [KIND SECONDS]: one wrk (or oha) measurement
    local key="$1" round="$2" kind="${3:-http}" seconds="${4:-$T}" url cpu_pids=() before after line tag t0 t1 tool=wrk
    case "$key" in
    direct_http) url="http://direct.bench.test:$P_ORIGIN/hook" ;;
    direct_https) url="https://direct.bench.test:$P_SOCAT_TLS/hook" ;;
    funnel_open) url="https://open.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_gated) url="https://gated.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_wg) url="https://wg.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress" "$pid_wg_a" "$pid_wg_b") ;;
    funnel_mesh) url="https://mesh.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress" "$pid_node") ;;
    funnel_mesh_gated) url="https://meshgated.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress" "$pid_node") ;;
    funnel_ip) url="https://ip.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_jwt) url="https://jwt.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_oidc) url="https://oidc.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_rate) url="https://rate.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress") ;;
    funnel_open_oha) url="https://open.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress"); tool=oha ;;
    funnel_mtls) url="https://mtls.bench.test:$P_INGRESS/hook"; cpu_pids=("$pid_ingress"); tool=oha ;;
    esac
    tag="$key-$round-$RANDOM"
    # 1 s warm-up (connections, caches), not counted.
    load_generator "$tool" 1 "$url" "$tag-warm" >/dev/null
    load_now
    before="$(cpu_ticks "${cpu_pids[@]}")"
    t0="$(date +%s.%N)"
    line="$(load_generator "$tool" "$seconds" "$url" "$tag")"
    t1="$(date +%s.%N)"
    after="$(cpu_ticks "${cpu_pids[@]}")"
    load_now
    say "$kind $key round $round: $line cpu_ticks=$((after - before))"
    echo "$kind $key $round $line cpu_ticks=$((after - before)) wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}') hz=$hz ncpu=${#cpu_pids[@]}" >>"$results"
}

load_generator() { # load_generator wrk|oha SECONDS URL TAG: prints one RESULT line
    local tool="$1" seconds="$2" url="$3" tag="$4"
    if [ "$tool" = wrk ]; then
        in_ns wrk -t"$THREADS" -c"$CONNS" -d"${seconds}s" -s "$here/webhook.lua" "$url" -- \
            "$work/body.json" "$signature" "$tag" "$jwt_token" "$session_cookie" \
            "$([ "$NEW_CONN" = 1 ] && echo close)" | grep '^RESULT'
        return
    fi
    # oha: the same POST (no fresh delivery id: no webhook gate is driven with it), with
    # the client certificate; requests still running at the deadline are awaited (-w).
    local keepalive=()
    [ "$NEW_CONN" = 1 ] && keepalive=(--disable-keepalive)
    in_ns oha --no-tui --output-format json -z "${seconds}s" -w -c "$CONNS" "${keepalive[@]}" -m POST \
        -D "$work/body.json" -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
        -H "X-Hub-Signature-256: $signature" -H "X-GitHub-Delivery: $tag" \
        -H "Authorization: Bearer $jwt_token" -H "Cookie: $session_cookie" \
        --cacert "$work/ca.pem" --cert "$work/client.pem" --key "$work/client.key" "$url" |
        jq -r '"RESULT requests=\([.statusCodeDistribution[]] | add // 0) seconds=\(.summary.total)"
            + " rps=\(.summary.requestsPerSec) p50_us=\((.latencyPercentiles.p50 // 0) * 1e6 | floor)"
            + " p99_us=\((.latencyPercentiles.p99 // 0) * 1e6 | floor)"
            + " non2xx=\([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0)"
            + " errors=\([.errorDistribution[]] | add // 0)"'
}

tcp_variant() { # tcp_variant KEY ROUND [KIND SECONDS CLIENT_CPU REVERSE]: one iperf3 measurement
    local key="$1" round="$2" kind="${3:-tcp}" seconds="${4:-$T}" port cpu_pids=() before after bps t0 t1
    local client=() direction=()
    [ -n "${5:-}" ] && client=(taskset -c "$5")
    [ -n "${6:-}" ] && direction=(--reverse) # the server (the private side) sends
    case "$key" in
    direct) port=$P_IPERF ;;
    socat) port=$P_SOCAT_TCP ;;
    tcp_funnel) port=$P_TCP_FUNNEL; cpu_pids=("$pid_ingress") ;;
    rathole) port=$P_RATHOLE; cpu_pids=("$pid_rathole_server" "$pid_rathole_client") ;;
    bore) port=$P_BORE; cpu_pids=("$pid_bore_server" "$pid_bore_client") ;;
    tcp_funnel_wg) port=$P_TCP_FUNNEL_WG; cpu_pids=("$pid_ingress" "$pid_wg_a" "$pid_wg_b") ;;
    tcp_funnel_mesh) port=$P_MESH_TCP; cpu_pids=("$pid_ingress" "$pid_node") ;;
    esac
    load_now
    before="$(cpu_ticks "${cpu_pids[@]}")"
    if [ -n "${PERF_DIR:-}" ] && [ "$key" = tcp_funnel_mesh ]; then
        # perf stat of the ingress and the node during the transfer (CPU per byte).
        perf stat -e task-clock,context-switches -p "$pid_ingress" -o "$PERF_DIR/stat.ingress.$round" -- sleep "$T" >/dev/null 2>&1 &
        perf stat -e task-clock,context-switches -p "$pid_node" -o "$PERF_DIR/stat.node.$round" -- sleep "$T" >/dev/null 2>&1 &
    fi
    t0="$(date +%s.%N)"
    bps="$("${client[@]}" iperf3 --client 127.0.0.1 --port "$port" --time "$seconds" --omit 1 "${direction[@]}" --json |
        jq -r '.end.sum_received.bits_per_second')"
    t1="$(date +%s.%N)"
    after="$(cpu_ticks "${cpu_pids[@]}")"
    load_now
    say "$kind $key round $round: $(awk -v b="$bps" 'BEGIN{printf "%.3f", b/1e9}') Gbit/s cpu_ticks=$((after - before))"
    echo "$kind $key $round bps=$bps seconds=$seconds cpu_ticks=$((after - before)) wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}') hz=$hz ncpu=${#cpu_pids[@]}" >>"$results"
}

pin_sides() { # pin_sides: the public side on CPU 0, the private side on CPU 1 (TCP_PAIRS)
    local pid
    for pid in "$pid_ingress" "$pid_rathole_server"; do taskset -a -cp 0 "$pid" >/dev/null; done
    for pid in "$pid_node" "$pid_rathole_client" "$pid_iperf3"; do taskset -a -cp 1 "$pid" >/dev/null; done
}

http_keys=(direct_http direct_https funnel_open funnel_gated funnel_ip funnel_jwt funnel_oidc funnel_rate funnel_open_oha funnel_mtls)
tcp_keys=(direct socat tcp_funnel rathole bore)
if [ "$WG_STANDIN" = 1 ]; then
    http_keys+=(funnel_wg)
    tcp_keys+=(tcp_funnel_wg)
fi
if [ "$mesh" = 1 ]; then
    http_keys+=(funnel_mesh funnel_mesh_gated)
    tcp_keys+=(tcp_funnel_mesh)
    if [ -n "${MESH_ONLY:-}" ]; then
        # Only what the mesh rows are read against (a quick A/B of the mesh path).
        http_keys=(direct_http funnel_open funnel_mesh)
        tcp_keys=(direct rathole tcp_funnel tcp_funnel_mesh)
    fi
fi
uptime_start="$(cat /proc/loadavg)"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order=("${http_keys[@]}"); else order=(); for ((i = ${#http_keys[@]} - 1; i >= 0; i--)); do order+=("${http_keys[$i]}"); done; fi
    for key in "${order[@]}"; do http_variant "$key" "$round"; done
    if [ $((round % 2)) = 1 ]; then order=("${tcp_keys[@]}"); else order=(); for ((i = ${#tcp_keys[@]} - 1; i >= 0; i--)); do order+=("${tcp_keys[$i]}"); done; fi
    for key in "${order[@]}"; do tcp_variant "$key" "$round"; done
done
# Each gate against the funnel without a gate, in back-to-back pairs: pair n of every gate,
# then pair n + 1 of every gate, so a drift of the load spreads over all the gates; within
# a pair the order alternates. The baseline is driven by the same load generator.
for pair in $(seq 1 "$GATE_PAIRS"); do
    for gate in "${gate_keys[@]}"; do
        base=funnel_open
        [ "$gate" = funnel_mtls ] && base=funnel_open_oha
        [ "$gate" = funnel_mesh_gated ] && base=funnel_mesh
        if [ $((pair % 2)) = 1 ]; then order=("$base" "$gate"); else order=("$gate" "$base"); fi
        for key in "${order[@]}"; do http_variant "$key" "$pair" "pair:$gate" "$GATE_T"; done
    done
done

# The TCP funnel over the mesh against encrypted rathole in back-to-back pairs, each side
# of both on a core of its own (see TCP_PAIRS); the affinities stay so until the run ends.
if [ "$mesh" = 1 ] && [ "$TCP_PAIRS" != 0 ]; then
    pin_sides
    for pair in $(seq 1 "$TCP_PAIRS"); do
        if [ $((pair % 2)) = 1 ]; then order=(tcp_funnel_mesh rathole); else order=(rathole tcp_funnel_mesh); fi
        for key in "${order[@]}"; do tcp_variant "$key" "$pair" tcppair "$TCP_T" 0; done
        for key in "${order[@]}"; do tcp_variant "$key" "$pair" tcppair_reverse "$TCP_T" 0 reverse; done
    done
fi

# ---------------------------------------------------------------- the tables
commit="$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(cd "$repo" && git status --porcelain -- ingress 2>/dev/null | head -1)"
[ -n "$dirty" ] && commit="$commit (ingress/ modified)"
table="$(python3 -B "$here/report.py" "$results" "$loads" "$started" "$commit" "$T" "$ROUNDS" "$CONNS" "$THREADS" "$GATE_T" "$PIN" "$TCP_T" "$NEW_CONN")"
echo "$table"
if [ -n "$out_file" ]; then echo "$table" >"$out_file"; say "tables written to $out_file"; fi
