-- KV v2 writes to distinct keys (one key per request), as many clients writing different secrets.
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  token = os.getenv("BENCH_TOKEN")
end
request = function()
  counter = counter + 1
  local path = "/v1/secret/data/bench/t" .. tid .. "-" .. counter
  return wrk.format("POST", path, { ["X-Vault-Token"] = token, ["Content-Type"] = "application/json" },
    '{"data":{"user":"app","password":"correct-horse-battery-staple"}}')
end
response = function(status, headers, body)
  if status ~= 200 then errors_seen = (errors_seen or 0) + 1 end
end
