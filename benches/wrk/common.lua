-- Shared by the wrk scripts of benches/side_by_side.py: thread numbering,
-- reading a file, and a done() that prints one JSON line the orchestrator parses.
--
-- Each script sets `collect` to the names of its per-thread counters (numbers);
-- done() sums them over the threads and reports them under "counters".

local common = {}

local threads = {}

function common.read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

-- Lines of a text file, empty lines skipped.
function common.read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      if line ~= "" then lines[#lines + 1] = line end
   end
   return lines
end

-- setup(): number the threads 0, 1, … (the global `thread_id` of each thread).
function setup(thread)
   thread:set("thread_id", #threads)
   threads[#threads + 1] = thread
end

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end) .. '"'
end

-- done(): one line `WRK_JSON {...}` on stdout; latencies in microseconds.
function done(summary, latency, requests)
   local e = summary.errors
   local parts = {
      string.format('"duration_us":%d', summary.duration),
      string.format('"requests":%d', summary.requests),
      string.format('"bytes":%d', summary.bytes),
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                    e.connect, e.read, e.write, e.status, e.timeout),
      string.format('"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
                    latency.min, latency.mean, latency.max, latency:percentile(50),
                    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)),
   }
   local counters, notes = {}, {}
   for _, name in ipairs(collect or {}) do
      local total = 0
      for _, t in ipairs(threads) do
         local v = t:get(name)
         if type(v) == "number" then total = total + v
         elseif type(v) == "string" and v ~= "" then notes[#notes + 1] = json_string(name .. ": " .. v)
         end
      end
      counters[#counters + 1] = string.format('"%s":%d', name, total)
   end
   parts[#parts + 1] = '"counters":{' .. table.concat(counters, ",") .. '}'
   parts[#parts + 1] = '"notes":[' .. table.concat(notes, ",") .. ']'
   io.write("WRK_JSON {" .. table.concat(parts, ",") .. "}\n")
end

return common
