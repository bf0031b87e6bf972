-- KV v2 reads of one existing secret. BENCH_CONSISTENCY=linearizable adds
-- `X-Vault-Consistency: linearizable` (bench/reads.sh).
function init(args)
  token = os.getenv("BENCH_TOKEN")
  consistency = os.getenv("BENCH_CONSISTENCY")
end
request = function()
  local headers = { ["X-Vault-Token"] = token }
  if consistency and consistency ~= "" then headers["X-Vault-Consistency"] = consistency end
  return wrk.format("GET", "/v1/secret/data/bench/read", headers)
end
