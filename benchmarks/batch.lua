-- wrk script: POST /api/v1/heartbeats with BENCH_BATCH beats each, over BENCH_COUNT
-- distinct instances (the identities heartbeat.lua uses). Set by the benchmark through
-- the environment: BENCH_BATCH, BENCH_COUNT, BENCH_PER_MODEL.
local count = tonumber(os.getenv("BENCH_COUNT") or "10000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local per_model = tonumber(os.getenv("BENCH_PER_MODEL") or "10")
local headers = {["Content-Type"] = "application/json"}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  i = id * 7919
end

local function beat(n)
  local host = string.format("10.%d.%d.%d", math.floor(n / 62500) % 256, math.floor(n / 250) % 250, n % 250 + 1)
  return string.format('{"model_name":"model-%d","host":"%s","port":8000,"queue_length":%d}',
    math.floor(n / per_model), host, n % 7)
end

request = function()
  local beats = {}
  for k = 1, batch do
    i = (i + 1) % count
    beats[k] = beat(i)
  end
  return wrk.format("POST", "/api/v1/heartbeats", headers, '{"beats":[' .. table.concat(beats, ",") .. ']}')
end
