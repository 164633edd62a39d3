"""Populates a hub through its JupyterHub REST API, identically for both hubs.

usage: populate.py API_URL TOKEN USERS GROUPS GROUP_SIZE TOKEN_USER OUT_TOKEN_FILE

Creates users u0..u<USERS-1> (POST /users, 200 at a time), GROUPS groups g0.. of GROUP_SIZE
consecutive users each (POST /groups/<g>, then POST /groups/<g>/users), and an API token of
TOKEN_USER made by the hub (POST /users/<name>/tokens), written to OUT_TOKEN_FILE: the kind of
token jupyterhub-singleuser authenticates with.
"""

import json
import sys
import time
import urllib.request

api, token, users, groups, group_size, token_user, out = sys.argv[1:8]
users, groups, group_size = int(users), int(groups), int(group_size)


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read()[:300]!r}")


start = time.monotonic()
names = [f"u{i}" for i in range(users)]
for i in range(0, users, 200):
    status, created = call("POST", "/users", {"usernames": names[i : i + 200]})
    if status != 201 or len(created) != len(names[i : i + 200]):
        sys.exit(f"POST /users: {status}, {len(created or [])} created")
users_secs = time.monotonic() - start
for g in range(groups):
    members = names[g * group_size : (g + 1) * group_size]
    call("POST", f"/groups/g{g}")
    call("POST", f"/groups/g{g}/users", {"users": members})
status, tok = call("POST", f"/users/{token_user}/tokens", {"note": "bench", "expires_in": 86400})
with open(out, "w") as f:
    f.write(tok["token"])
print(f"{users} users in {users_secs:.1f} s, {groups} groups of {group_size}, "
      f"{time.monotonic() - start:.1f} s in all")
