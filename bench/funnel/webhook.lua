-- wrk script of bench/funnel/run.sh: a GitHub webhook delivery per request.
--
-- Every request is the same POST (fixed body, with the X-Hub-Signature-256 the script
-- computed once over it) except X-GitHub-Delivery, which is fresh per request so that the
-- gate's replay cache admits every one. The same script drives every HTTP variant (direct,
-- funnel without gate, funnel with the gate), so the client does the same work in each.
--
-- Arguments (after `--`): BODY_FILE SIGNATURE RUN_TAG [BEARER_TOKEN [COOKIE [close]]]
-- With BEARER_TOKEN every request also carries `Authorization: Bearer TOKEN` (for the JWT
-- gate's variant), with COOKIE a `Cookie: COOKIE` header (the OIDC gate's session); the
-- other variants ignore these headers, so all send them. With `close`, every request
-- carries `Connection: close`: the server closes the connection after answering and wrk
-- opens a new one (TCP and TLS) for the next request.
-- done() prints one line for run.sh to parse:
--   RESULT requests=N seconds=S rps=R p50_us=A p99_us=B non2xx=C errors=E

local body, signature, tag, bearer, cookie, close
local counter = 0
local thread_id = 0
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
  signature = args[2]
  tag = args[3] or "run"
  if args[4] and args[4] ~= "" then bearer = "Bearer " .. args[4] end
  if args[5] and args[5] ~= "" then cookie = args[5] end
  close = args[6] == "close"
  thread_id = tid or 0
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = string.format("%s-%d-%d", tag, thread_id, counter),
    ["X-Hub-Signature-256"] = signature,
  }
  if bearer then headers["Authorization"] = bearer end
  if cookie then headers["Cookie"] = cookie end
  if close then headers["Connection"] = "close" end
  return wrk.format("POST", "/hook", headers, body)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
