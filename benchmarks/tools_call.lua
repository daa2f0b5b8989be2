-- wrk script: the same tools/call in one MCP session, again and again.
-- SESSION_ID, TOKEN, LIMIT and TOOL come from the environment; the benchmark script sets them.
wrk.method = "POST"
-- TOOL names the tool when set: a virtual server exposes the backend's `add` under a prefix.
local tool = os.getenv("TOOL") or "add"
wrk.body = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"a":20,"b":22}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = os.getenv("SESSION_ID")
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
-- The bearer TOKEN, the RESULT line and LIMIT, from the file beside this one.
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_io.lua")
