-- wrk's script for benchmarks/serve.py: GET the keys of a list in order (round and round), and check
-- every answer byte for byte.
--
--   wrk -t1 -c64 -d10s -s serve_load.lua http://127.0.0.1:8000 -- KEYS BODIES [START]
--
-- KEYS: one path a line ("/contig/a/17"). BODIES: for each line of KEYS, in order, "<length>\n"
-- then that many bytes: the body the key must answer with. Bodies are distinct, so a body names
-- its key: each request counts its key up, each answer counts the key its body belongs to down.
-- At the end no count may be negative, and at most one per connection (answers still on their
-- way when wrk stopped) positive; an answer for the wrong key leaves its own key negative.
-- done() prints one line of JSON: requests, seconds, p50/p99 (ms), failed (status != 200 or
-- socket errors), wrong (a body no key has, or counts that do not balance).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local paths, body_key, counts = {}, {}, {}
local n, i = 0, 0
failed, wrong, answered, sent, matched, negative = 0, 0, 0, 0, 0, 0

local function read_file(name)
  local f = assert(io.open(name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    paths[n] = line
    counts[n] = 0
  end
  local blob, pos = read_file(args[2]), 1
  for k = 1, n do
    local nl = blob:find("\n", pos, true)
    local len = tonumber(blob:sub(pos, nl - 1))
    body_key[blob:sub(nl + 1, nl + len)] = k
    pos = nl + 1 + len
  end
  i = tonumber(args[3] or "0") % n
end

function request()
  i = i % n + 1
  sent = sent + 1
  local c = counts[i]
  if c < 0 then negative = negative - 1 end
  counts[i] = c + 1
  return wrk.format("GET", paths[i])
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    failed = failed + 1
    return
  end
  local k = body_key[body]
  if k == nil then
    wrong = wrong + 1
  else
    matched = matched + 1
    local c = counts[k] - 1
    if c < 0 then negative = negative + 1 end
    counts[k] = c
  end
end

function done(summary, latency, requests)
  local failed_all, wrong_all, answered_all, negative_all, positive_all = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    failed_all = failed_all + t:get("failed")
    wrong_all = wrong_all + t:get("wrong")
    answered_all = answered_all + t:get("answered")
    local neg = t:get("negative")
    negative_all = negative_all + neg
    positive_all = positive_all + t:get("sent") - t:get("matched") + neg  -- sum(counts) = positive - negative
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "answered": %d, "seconds": %.6f, "p50_ms": %.4f, "p99_ms": %.4f, "failed": %d, ' ..
    '"socket_errors": %d, "wrong": %d, "unbalanced_negative": %d, "unbalanced_positive": %d}\n',
    summary.requests, answered_all, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, failed_all, e.connect + e.read + e.write + e.timeout, wrong_all,
    negative_all, positive_all))
end
