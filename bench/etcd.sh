#!/usr/bin/env bash
# vaultd on etcd (issue 7): two vaultd nodes sharing a 3-member etcd cluster (Debian's
# etcd-server, real fsync, on 127.0.0.1), `storage "etcd"` with the HA lock in the same etcd.
#  1. KV v2 writes and reads under wrk (c=32) through the active node, writes through the standby
#     (forwarded over the cluster port).
#  2. Failover, TRIALS times: SIGKILL the active node, then time until the first write
#     acknowledged through the other; the killed node is restarted and unsealed as the standby.
#     The lock's TTL (LOCK_TTL, 2s here; Vault's default is 15s) bounds it from below: the dead
#     node's lease must expire in etcd before anyone else can take the lock.
#
#   bash bench/etcd.sh
#   TRIALS=3 DURATION=5s LOCK_TTL=5s bash bench/etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
TRIALS=${TRIALS:-10}
LOCK_TTL=${LOCK_TTL:-2s}
BASE_PORT=${BASE_PORT:-19700}
VAULTD=${VAULTD_BIN:-target/release/vaultd}
ETCD=${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}
[ -x "$VAULTD" ] || { echo "build vaultd first (make build)"; exit 1; }
[ -x "$ETCD" ] || { echo "etcd is required (apt-get install etcd-server)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }

WORK=$(mktemp -d)
declare -A PID
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# etcd member I: client port BASE_PORT+I, peer port BASE_PORT+10+I.
ETCD_URLS=""; CLUSTER=""
for i in 1 2 3; do
  ETCD_URLS+="${ETCD_URLS:+,}http://127.0.0.1:$((BASE_PORT + i))"
  CLUSTER+="${CLUSTER:+,}e$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
done
for i in 1 2 3; do
  PID[etcd-$i]=$(sh -c '"$0" --name "e$1" --data-dir "$2/etcd$1" \
    --listen-client-urls "http://127.0.0.1:$3" --advertise-client-urls "http://127.0.0.1:$3" \
    --listen-peer-urls "http://127.0.0.1:$4" --initial-advertise-peer-urls "http://127.0.0.1:$4" \
    --initial-cluster "$5" --initial-cluster-state new --initial-cluster-token bench \
    > "$2/etcd$1.log" 2>&1 & echo $!' "$ETCD" "$i" "$WORK" $((BASE_PORT + i)) $((BASE_PORT + 10 + i)) "$CLUSTER")
done
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$((BASE_PORT + 1))/health" | grep -q '"true"' && break; sleep 0.1; done

# vaultd node I: API on BASE_PORT+100+10*I, cluster listener one above.
addr() { echo "http://127.0.0.1:$((BASE_PORT + 100 + 10 * $1))"; }
start() {
  local i=$1 port=$((BASE_PORT + 100 + 10 * $1)) dir="$WORK/v$1"
  mkdir -p "$dir"
  cat > "$dir/config.hcl" <<HCL
storage "etcd" {
  address  = "$ETCD_URLS"
  path     = "/vaultd/"
  lock_ttl = "$LOCK_TTL"
}
listener "tcp" {
  address         = "127.0.0.1:$port"
  cluster_address = "127.0.0.1:$((port + 1))"
  tls_disable     = true
}
api_addr      = "http://127.0.0.1:$port"
cluster_addr  = "https://127.0.0.1:$((port + 1))"
disable_mlock = true
HCL
  PID[v$i]=$(sh -c '"$0" server -config="$1" >> "$2" 2>&1 & echo $!' "$VAULTD" "$dir/config.hcl" "$dir/server.log")
  for _ in $(seq 1 200); do curl -s -o /dev/null "$(addr "$i")/v1/sys/health" && return; sleep 0.05; done
  echo "vaultd node $i did not start:"; tail -20 "$dir/server.log"; exit 1
}
unseal() { curl -sf -X PUT -d "{\"key\":\"$KEY\"}" "$(addr "$1")/v1/sys/unseal" > /dev/null; }

start 1; start 2
INIT=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "$(addr 1)/v1/sys/init")
KEY=$(json 'd["keys_base64"][0]' <<<"$INIT"); TOKEN=$(json 'd["root_token"]' <<<"$INIT")
unseal 1; wait_health "$(addr 1)" 200
unseal 2; wait_health "$(addr 2)" 429
curl -sf -X POST -H "X-Vault-Token: $TOKEN" -d '{"type":"kv","options":{"version":"2"}}' "$(addr 1)/v1/sys/mounts/secret" > /dev/null
curl -sf -X POST -H "X-Vault-Token: $TOKEN" -d '{"data":{"v":"x"}}' "$(addr 1)/v1/secret/data/bench/read" > /dev/null

echo "== vaultd on etcd $("$ETCD" --version | awk '/etcd Version/{print $3}') (3 members, 127.0.0.1), 2 vaultd nodes, wrk -t$THREADS -c$CONNS -d$DURATION"
printf "%-44s %10s\n" "KV v2 writes/s through the active node" "$(wrk_rate write.lua "$(addr 1)")"
printf "%-44s %10s\n" "KV v2 writes/s through the standby" "$(wrk_rate write.lua "$(addr 2)")"
printf "%-44s %10s\n" "KV v2 reads/s through the active node" "$(wrk_rate read.lua "$(addr 1)")"
printf "%-44s %10s\n" "KV v2 reads/s through the standby" "$(wrk_rate read.lua "$(addr 2)")"

for trial in $(seq 1 "$TRIALS"); do
  a=""; for _ in $(seq 1 600); do
    for i in 1 2; do [ "$(code GET "$(addr "$i")/v1/sys/health" "" 1)" = 200 ] && a=$i; done
    [ -n "$a" ] && break; sleep 0.05
  done
  [ -n "$a" ] || { echo "no active node before trial $trial" >&2; exit 1; }
  o=$((3 - a)); wait_health "$(addr "$o")" 429
  kill -9 "${PID[v$a]}"; unset "PID[v$a]"
  start_t=$EPOCHREALTIME
  while :; do
    c=$(code POST "$(addr "$o")/v1/secret/data/failover/$trial" '{"data":{"t":"x"}}' 1)
    end_t=$EPOCHREALTIME
    [ "${c:0:1}" = 2 ] && break
    (( ${end_t/./} - ${start_t/./} < 120000000 )) || { echo "no acknowledged write within 120 s" >&2; exit 1; }
    sleep 0.01
  done
  t=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$end_t" "$start_t")
  echo "$t" >> "$WORK/times"
  echo "  trial $trial: killed node $a, first acknowledged write through node $o after $t s" >&2
  start "$a" > /dev/null; unseal "$a"
done
echo "vaultd on etcd failover (lock_ttl $LOCK_TTL; SIGKILL active -> first acknowledged write): $(stats < "$WORK/times")"
