-- wrk script: GETs the request paths listed in a file (one per line), round robin from a
-- random start per thread.  wrk -t2 -c32 -d30s --latency -s paths.lua http://HOST:PORT -- FILE [TOKEN]
local paths = {}
local next_index = 1

local headers = { ["Accept"] = "application/fhir+json" }

-- args[2], if given, is an access token sent as `Authorization: Bearer ...`
function init(args)
  if args[2] and #args[2] > 0 then
    headers["Authorization"] = "Bearer " .. args[2]
  end
  for line in io.lines(args[1]) do
    if #line > 0 then
      paths[#paths + 1] = line
    end
  end
  assert(#paths > 0, "no request paths in " .. args[1])
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  next_index = math.random(#paths)
end

function request()
  local path = paths[next_index]
  next_index = next_index % #paths + 1
  return wrk.format("GET", path, headers)
end
