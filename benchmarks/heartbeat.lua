-- wrk script: POST bodies over many distinct instances.
-- Set by the benchmark through the environment: BENCH_PATH, BENCH_COUNT, BENCH_MODELS.
local path = os.getenv("BENCH_PATH") or "/api/v1/heartbeat"
local count = tonumber(os.getenv("BENCH_COUNT") or "10000")
local per_model = tonumber(os.getenv("BENCH_PER_MODEL") or "10")
local offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  i = id * 7919
end

request = function()
  i = (i + 1) % count
  local n = i + offset
  local body = string.format(
    '{"model_name":"model-%d","host":"10.%d.%d.%d","port":8000,"queue_length":%d}',
    math.floor(n / per_model), math.floor(n / 62500) % 256, math.floor(n / 250) % 250, n % 250 + 1, n % 7)
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
