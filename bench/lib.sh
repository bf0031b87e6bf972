# Helpers shared by the benchmark scripts (sourced, not run): etcd.sh and ha.sh use them;
# cluster.sh and reads.sh still carry their own copies (to be moved here).
#
# Needs: $TOKEN for authenticated calls, $THREADS/$CONNS/$DURATION for wrk.

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# code METHOD URL [BODY] [TIMEOUT]: the HTTP status only, redirects not followed.
code() { curl -s -o /dev/null -m "${4:-5}" -w '%{http_code}' -X "$1" -H "X-Vault-Token: $TOKEN" ${3:+-d "$3"} "$2" || true; }

# wait_health ADDR CODES: until sys/health answers one of CODES (space-separated), at most 30 s.
wait_health() {
  local c
  for _ in $(seq 1 600); do
    c=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1/v1/sys/health")
    [[ " $2 " == *" $c "* ]] && return 0; sleep 0.05
  done
  echo "$1 never answered $2 on sys/health" >&2; return 1
}

# wrk_rate SCRIPT ADDR: requests/s of bench/SCRIPT against ADDR; non-2xx answers are reported.
wrk_rate() {
  local out bad
  out=$(BENCH_TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "bench/$1" "$2" 2>&1)
  bad=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" | grep -o '[0-9]*$' || true)
  [ -n "$bad" ] && echo "  warning: $bad non-2xx responses on $2" >&2
  grep 'Requests/sec' <<<"$out" | awk '{printf "%d", $2}'
}

# stats < times: the median and maximum of whitespace-separated seconds.
stats() { python3 -c '
import sys, statistics
xs = sorted(float(x) for x in sys.stdin.read().split())
print(f"p50 {statistics.median(xs):.3f} s, max {xs[-1]:.3f} s over {len(xs)} trials")'; }
