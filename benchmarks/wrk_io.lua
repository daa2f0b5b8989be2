-- What every benchmark wrk script shares, loaded with dofile from beside it:
-- a bearer TOKEN from the environment, when there is one, the RESULT line that
-- benchmarks/wrk.py reads once wrk is done, and the request count LIMIT.
if os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT {\"requests\": %d, \"seconds\": %f, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status))
end

-- LIMIT > 0 stops each wrk thread after that many responses and prints STOPPED
-- (wrk itself has no request count, and waits out -d even when every thread has
-- stopped: benchmarks/wrk.py then ends it early with SIGINT). A run is so
-- bounded by count as well as by -d.
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
