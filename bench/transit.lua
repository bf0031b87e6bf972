-- Transit encryption of a 1 KiB payload with one key, as an application encrypting records.
function init(args)
  token = os.getenv("BENCH_TOKEN")
  -- 768 random-looking bytes base64-encode to exactly 1024 characters.
  local raw = {}
  for i = 1, 768 do raw[i] = string.char((i * 37) % 256) end
  local b = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  local bytes = table.concat(raw)
  local enc = ((bytes:gsub('.', function(x)
    local r, c = '', x:byte()
    for i = 8, 1, -1 do r = r .. (c % 2 ^ i - c % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#bytes % 3 + 1])
  body = '{"plaintext":"' .. enc .. '"}'
end
request = function()
  return wrk.format("POST", "/v1/transit/encrypt/bench", { ["X-Vault-Token"] = token, ["Content-Type"] = "application/json" }, body)
end
