"""Starts servers through a hub's JupyterHub REST API, identically for both hubs, and waits until
the users list shows them ready.

usage: spawn.py API_URL TOKEN USERS RUNNING [CONCURRENCY]

Starts the default server of RUNNING of the users u0..u<USERS-1>, spread evenly (u0, u5, u10, ...
for 2,000 of 10,000), with `POST /users/<name>/server` (201 or 202), CONCURRENCY requests at a
time (default 32), then waits until `GET /users?state=ready` counts RUNNING users. Prints the
names' stride and the time taken.
"""

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

api, token, users, running = sys.argv[1:5]
users, running = int(users), int(running)
concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 32


def call(method, path):
    req = urllib.request.Request(api + path, data=b"" if method == "POST" else None, method=method)
    req.add_header("Authorization", f"token {token}")
    req.add_header("Accept", "application/jupyterhub-pagination+json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read()[:300]!r}")


def running_names():
    if running <= 0:
        return []
    stride = users / running
    return [f"u{int(i * stride)}" for i in range(running)]


def start(name):
    status, _ = call("POST", f"/users/{name}/server")
    if status not in (201, 202):
        sys.exit(f"POST /users/{name}/server: {status}")


t0 = time.monotonic()
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(start, running_names()))
started = time.monotonic() - t0
deadline = time.monotonic() + 600
while True:
    _, page = call("GET", "/users?state=ready&limit=1")
    total = page["_pagination"]["total"]
    if total == running:
        break
    if time.monotonic() > deadline:
        sys.exit(f"{total} of {running} servers ready after 600 s")
    time.sleep(0.5)
print(f"{running} servers started in {started:.1f} s, all ready after {time.monotonic() - t0:.1f} s")
