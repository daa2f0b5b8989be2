-- wrk script: the same non-streaming chat completion, again and again.
-- MODEL, TOKEN and LIMIT come from the environment; the benchmark script sets them.
wrk.method = "POST"
wrk.body = '{"model":"' .. (os.getenv("MODEL") or "fast") .. '","messages":[{"role":"user","content":"What is 20 + 22?"}]}'
wrk.headers["Content-Type"] = "application/json"
-- The bearer TOKEN, the RESULT line and LIMIT, from the file beside this one.
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_io.lua")
