-- wrk script for bench/load.py: send pre-built (pre-signed) HTTP requests, each at most once.
--
-- Environment (set by bench/load.py):
--   BENCH_REQUESTS  file prefix; thread k reads "<prefix>.<k>": records "<token> <length>\n<raw request>"
--   BENCH_OUT       file that done() writes the results to (read back by bench/load.py)
--   BENCH_WRAP      "1": cycle through the requests (the load generator check against bench/sink.py only)
--
-- A request goes out only after delay() has reserved one of the thread's requests, so none is sent
-- twice (wrk's one call of request() before the run, to count pipelined requests, uses none up); once every reserved request is answered the thread has run out and stops wrk at once
-- (SIGINT, as Ctrl-C would), so a point ends at its duration or when its requests run out.
-- Latency is measured here, from request() to response(), matched on the "message_id" that the
-- answer repeats: wrk's own percentiles add synthetic samples (its coordinated-omission correction),
-- which a closed loop of connections does not need. Clock: CLOCK_MONOTONIC through LuaJIT's FFI.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
int getpid(void);
int kill(int pid, int sig);
]]
local C = ffi.C
local timespec = ffi.new("bench_timespec")
local CLOCK_MONOTONIC, SIGINT = 1, 2
local PARK_MS = 3600 * 1000 -- a connection with nothing left to send waits here until wrk stops

local function now_us()
    C.clock_gettime(CLOCK_MONOTONIC, timespec)
    return tonumber(timespec.tv_sec) * 1000000 + tonumber(timespec.tv_nsec) / 1000
end

-- setup() and done() run in wrk's main Lua state, the rest in each thread's own state.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("thread_no", #threads)
end

function init(_args)
    local path = os.getenv("BENCH_REQUESTS") .. "." .. thread_no
    local file = assert(io.open(path, "rb"))
    local data = file:read("*a")
    file:close()
    requests, tokens = {}, {}
    local pos = 1
    while pos <= #data do
        local eol = data:find("\n", pos, true)
        local token, length = data:sub(pos, eol - 1):match("^(%S+) (%d+)$")
        length = tonumber(length)
        requests[#requests + 1] = data:sub(eol + 1, eol + length)
        tokens[#tokens + 1] = token
        pos = eol + length + 1
    end
    total = #requests
    wrap = os.getenv("BENCH_WRAP") == "1"
    reserved, sent, completed, unmatched, overflow = 0, 0, 0, 0, 0
    exhausted = 0
    first_us, last_us = -1, -1
    started, latencies, statuses = {}, {}, {}
end

function delay()
    if wrap or reserved < total then
        reserved = reserved + 1
        return 0
    end
    return PARK_MS
end

function request()
    if reserved == 0 then
        -- wrk calls request() once before the run to see whether the script pipelines: nothing is
        -- sent then, so nothing is used up.
        return requests[1]
    end
    sent = sent + 1
    local i = sent
    if i > total then
        if not wrap then
            -- Only after a reconnect that lost a request (wrk then asks again without delay()):
            -- never send a signed request twice.
            overflow = overflow + 1
            return "GET /bench-overflow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        end
        i = (i - 1) % total + 1
    end
    local t = now_us()
    if first_us < 0 then
        first_us = t
    end
    started[tokens[i]] = t
    return requests[i]
end

function response(status, _headers, body)
    local t = now_us()
    last_us = t
    completed = completed + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    local token = body and body:match('"message_id":"([^"]+)"')
    local start = token and started[token]
    if start then
        latencies[#latencies + 1] = t - start
        started[token] = nil
    else
        unmatched = unmatched + 1
    end
    if not wrap and completed >= total and exhausted == 0 then
        exhausted = 1
        C.kill(C.getpid(), SIGINT)
    end
end

function done(summary, latency, _requests)
    local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
    local e = summary.errors
    out:write(string.format("summary %.0f %.0f\n", summary.duration, summary.requests))
    out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.timeout, e.status))
    out:write(string.format("wrk_latency %.0f %.0f\n", latency:percentile(50), latency:percentile(99)))
    for _, thread in ipairs(threads) do
        out:write(string.format("thread %.1f %.1f %d %d %d %d %d %d\n",
            thread:get("first_us"), thread:get("last_us"), thread:get("completed"), thread:get("sent"),
            thread:get("total"), thread:get("unmatched"), thread:get("overflow"), thread:get("exhausted")))
        for code, count in pairs(thread:get("statuses")) do
            out:write(string.format("status %s %d\n", code, count))
        end
        local values = thread:get("latencies")
        local chunk = {}
        for i = 1, #values do
            chunk[#chunk + 1] = string.format("%.0f", values[i])
            if #chunk == 1000 or i == #values then
                out:write("lat " .. table.concat(chunk, " ") .. "\n")
                chunk = {}
            end
        end
    end
    out:close()
end
