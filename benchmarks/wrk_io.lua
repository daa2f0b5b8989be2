-- What every benchmark wrk script shares, loaded with dofile from beside it:
-- a bearer TOKEN from the environment, when there is one, and the RESULT line
-- that benchmarks/wrk.py reads once wrk is done.
if os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT {\"requests\": %d, \"seconds\": %f, \"p50_us\": %d, \"p99_us\": %d, \"errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status))
end
