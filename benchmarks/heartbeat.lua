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

-- BENCH_SHAPE: native (/api/v1/heartbeat), dbgpt (every field of DB-GPT's ModelInstance)
-- or fastchat (a worker's name and its queue length).
local shape = os.getenv("BENCH_SHAPE") or "native"
-- BENCH_TOKEN: sent as Authorization: Bearer (the auth-on scenarios).
local headers = {["Content-Type"] = "application/json"}
if os.getenv("BENCH_TOKEN") then
  headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
end

request = function()
  i = (i + 1) % count
  local n = i + offset
  local model = math.floor(n / per_model)
  local host = string.format("10.%d.%d.%d", math.floor(n / 62500) % 256, math.floor(n / 250) % 250, n % 250 + 1)
  local body
  if shape == "fastchat" then
    body = string.format('{"worker_name":"http://%s:8000","queue_length":%d}', host, n % 7)
  elseif shape == "dbgpt" then
    body = string.format(
      '{"model_name":"model-%d","host":"%s","port":8000,"weight":1.0,"check_healthy":true,' ..
      '"healthy":false,"enabled":true,"prompt_template":null,"last_heartbeat":null,' ..
      '"remove_from_registry":false}', model, host)
  else
    body = string.format('{"model_name":"model-%d","host":"%s","port":8000,"queue_length":%d}', model, host, n % 7)
  end
  return wrk.format("POST", path, headers, body)
end
