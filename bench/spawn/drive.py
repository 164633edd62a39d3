"""Spawn overhead through a hub's REST API (JupyterHub 6's, which Atelier's matches).

    python3 drive.py --api http://127.0.0.1:P/hub/api --token T --prefix jh \
        [--warmup 3] [--sequential 20] [--concurrent 100]

Creates the users it needs, then
  * sequential: one start after another, each timed from its POST to the server being ready
    (a 201 answer is ready; a 202 is followed by GET /users/<name> every 2 ms until `ready`);
  * concurrent: that many starts at once (one thread and connection each, released together),
    each timed the same way, and the whole from the first POST to the last server ready.
Every start must end ready; anything else is an error and the run fails. Prints one JSON object.
Standard library only (it runs in any python3).
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


class Api:
    def __init__(self, base, token):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.path = u.hostname, u.port, u.path.rstrip("/")
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self.conn.request(method, self.path + path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed: once more on a new one.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise


def start_and_wait(api, name, deadline_s=60):
    t0 = time.perf_counter()
    status, body = api.call("POST", f"/users/{name}/server", {})
    if status == 201:
        return time.perf_counter() - t0
    if status != 202:
        raise RuntimeError(f"start of {name}: {status} {body}")
    while time.perf_counter() - t0 < deadline_s:
        status, user = api.call("GET", f"/users/{name}")
        server = ((user or {}).get("servers") or {}).get("")
        if status == 200 and server and server.get("ready"):
            return time.perf_counter() - t0
        time.sleep(0.002)
    raise RuntimeError(f"start of {name}: not ready after {deadline_s} s")


def summary(times):
    ms = sorted(t * 1000 for t in times)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[max(0, int(len(ms) * 0.9) - 1)], 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sequential", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=100)
    a = p.parse_args()

    api = Api(a.api, a.token)
    warm = [f"{a.prefix}w{i}" for i in range(a.warmup)]
    seq = [f"{a.prefix}s{i}" for i in range(a.sequential)]
    conc = [f"{a.prefix}c{i}" for i in range(a.concurrent)]
    names = warm + seq + conc
    for i in range(0, len(names), 100):
        status, body = api.call("POST", "/users", {"usernames": names[i : i + 100]})
        if status not in (200, 201):
            raise SystemExit(f"creating users: {status} {body}")

    for name in warm:
        start_and_wait(api, name)
    sequential = [start_and_wait(api, name) for name in seq]

    results, errors = [None] * len(conc), []
    apis = [Api(a.api, a.token) for _ in conc]
    for each in apis:  # connect beforehand: the timing is the hub's, not the handshake's
        each.call("GET", "/")
    barrier = threading.Barrier(len(conc) + 1)

    def worker(i):
        barrier.wait()
        try:
            took = start_and_wait(apis[i], conc[i])
            results[i] = (time.perf_counter(), took)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"{conc[i]}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(conc))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("concurrent starts failed: " + "; ".join(errors[:5]))
    total = max(end for end, _ in results) - t0
    out = {
        "sequential": summary(sequential),
        "concurrent": summary([d for _, d in results]) | {"total_ms": round(total * 1000, 3)},
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
