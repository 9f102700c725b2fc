-- GET requests cycling through a list of paths (QIDO-RS, WADO-RS, metadata).
--   wrk ... -s get.lua URL -- PATHS_FILE ACCEPT
-- PATHS_FILE holds one path per line (query string included). Thread k starts at
-- its own offset in the list. Every request string is built once, in init().

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

collect = {}

local reqs, n, i

function init(args)
   local paths = common.read_lines(args[1])
   local headers = { Accept = args[2] }
   reqs = {}
   for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p, headers) end
   n = #reqs
   i = (thread_id * 7919) % n  -- threads start apart in the list
end

function request()
   i = i % n + 1
   return reqs[i]
end
