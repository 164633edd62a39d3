-- One request kind per wrk run, chosen by the environment run.sh sets:
--   BENCH_TOKEN   the Authorization token
--   BENCH_KIND    whoami | page | ready | user | activity
--   BENCH_USERS   the number of users u0..u<N-1> (random user per request for user/activity)
--   BENCH_RUNNING the number of users with a ready server (ready: the pages of 200 in turn)
local token = os.getenv("BENCH_TOKEN")
local kind = os.getenv("BENCH_KIND")
local n = tonumber(os.getenv("BENCH_USERS"))
local running = tonumber(os.getenv("BENCH_RUNNING") or "0")
local ready_pages = math.max(1, math.ceil(running / 200))
local get = { ["Authorization"] = "token " .. token }
local page = {
  ["Authorization"] = "token " .. token,
  ["Accept"] = "application/jupyterhub-pagination+json",
}
local post = { ["Authorization"] = "token " .. token, ["Content-Type"] = "application/json" }
local seq = 0

setup = function(thread)
  thread:set("id", math.random(0, 999))
end

init = function(args)
  math.randomseed(os.time() + (id or 0))
end

request = function()
  if kind == "whoami" then
    return wrk.format("GET", "/hub/api/user", get)
  elseif kind == "page" then
    return wrk.format("GET", "/hub/api/users?limit=200", page)
  elseif kind == "ready" then
    -- The culler's walk: the users with a ready server, page after page (offset 0, 200, ...).
    seq = seq + 1
    local offset = (seq % ready_pages) * 200
    return wrk.format("GET", "/hub/api/users?state=ready&limit=200&offset=" .. offset, page)
  elseif kind == "user" then
    return wrk.format("GET", "/hub/api/users/u" .. math.random(0, n - 1), get)
  else
    -- What jupyterhub-singleuser posts: the user's last activity, a fresh timestamp each time
    -- (the same second, increasing microseconds) so that both hubs write it. No `servers` key:
    -- the users have no server.
    seq = seq + 1
    local ts = os.date("!%Y-%m-%dT%H:%M:%S", os.time()) .. string.format(".%06dZ", seq % 1000000)
    return wrk.format("POST", "/hub/api/users/u" .. math.random(0, n - 1) .. "/activity", post,
      '{"last_activity": "' .. ts .. '"}')
  end
end
