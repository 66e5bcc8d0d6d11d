-- wrk script: GET one model's instances (or a selection), cycling over models.
local path = os.getenv("BENCH_PATH") or "/api/v1/instances"
local query = os.getenv("BENCH_QUERY") or "&healthy_only=true"
local models = tonumber(os.getenv("BENCH_MODELS") or "1000")
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  i = id * 7919
end

request = function()
  i = (i + 1) % models
  return wrk.format("GET", string.format("%s?model_name=model-%d%s", path, i, query))
end
