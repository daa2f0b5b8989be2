-- wrk script: the same non-streaming chat completion, again and again.
-- MODEL, TOKEN and LIMIT come from the environment; the benchmark script sets them.
-- LIMIT > 0 stops each wrk thread after that many responses and prints STOPPED
-- (wrk itself has no request count, and waits out -d even when every thread has
-- stopped: the benchmark then ends it early with SIGINT). A run is so bounded by
-- count as well as by -d.
wrk.method = "POST"
wrk.body = '{"model":"' .. (os.getenv("MODEL") or "fast") .. '","messages":[{"role":"user","content":"What is 20 + 22?"}]}'
wrk.headers["Content-Type"] = "application/json"
-- The bearer TOKEN and the RESULT line, from the file beside this one.
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_io.lua")

local limit = tonumber(os.getenv("LIMIT") or "0") or 0
if limit > 0 then
  -- Only defined when needed: a response() callback makes wrk hand every response to Lua.
  local answered = 0
  response = function(status, headers, body)
    answered = answered + 1
    if answered == limit then
      wrk.thread:stop()
      io.write("STOPPED\n")
      io.stdout:flush()
    end
  end
end
