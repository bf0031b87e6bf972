-- KV v2 reads of one existing secret.
function init(args)
  token = os.getenv("BENCH_TOKEN")
end
request = function()
  return wrk.format("GET", "/v1/secret/data/bench/read", { ["X-Vault-Token"] = token })
end
