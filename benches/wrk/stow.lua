-- STOW-RS: every request stores a new study. The body is a template built by
-- benches/side_by_side.py in which every UID (and the PatientID) holds the
-- 18-digit marker below; each request replaces it, everywhere, by a number of the
-- same length that no other request uses, so element lengths stay valid.
--   wrk ... -s stow.lua URL -- BODY_FILE PATH CONTENT_TYPE THREADS [FIRST]
-- FIRST (default 0) is added to every number: runs in slices (benches/sustained.py)
-- go on where the last one ended instead of storing its studies again.
-- response() checks each answer: 200 and no FailureReason (0008,1197), which every
-- item of a FailedSOPSequence carries (an empty sequence is allowed: Orthanc sends
-- one); it counts the stored instances as the ReferencedSOPInstanceUIDs (0008,1155).
-- wrk calls request() once before the run to check it (thread 0): that number is
-- never sent.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

local MARKER = "918273645000000000"  -- "9182736450" followed by an 8-digit number

collect = { "sent", "ok_responses", "ok_instances", "bad_responses", "first_bad" }
sent, ok_responses, ok_instances, bad_responses, first_bad = 0, 0, 0, 0, ""

local pieces, nthreads, first

function init(args)
   local body = common.read_file(args[1])
   local req = wrk.format("POST", args[2], {
      ["Content-Type"] = args[3],
      Accept = "application/dicom+json",
   }, body)
   nthreads = tonumber(args[4])
   first = tonumber(args[5] or "0")
   pieces = {}
   local pos = 1
   while true do
      local a, b = req:find(MARKER, pos, true)
      if not a then break end
      pieces[#pieces + 1] = req:sub(pos, a - 1)
      pos = b + 1
   end
   pieces[#pieces + 1] = req:sub(pos)
   assert(#pieces > 1, "no marker in the STOW template")
end

function request()
   -- numbers 1, 2, … over all threads: thread k sends k+1, k+1+T, k+1+2T, …
   local n = first + thread_id + 1 + sent * nthreads
   sent = sent + 1
   return table.concat(pieces, string.format("9182736450%08d", n))
end

function response(status, headers, body)
   if status == 200 and not body:find('"00081197"', 1, true) then
      ok_responses = ok_responses + 1
      local _, refs = body:gsub('"00081155"', "")
      ok_instances = ok_instances + refs
   else
      bad_responses = bad_responses + 1
      if first_bad == "" then first_bad = status .. " " .. body:sub(1, 300) end
   end
end
