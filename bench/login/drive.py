"""Logins through the OpenID Connect flow, as browsers make them, against one hub.

    python3 drive.py --hub http://127.0.0.1:P --login-path /hub/oauth_login/test \
        --callback-prefix http://127.0.0.1:P/hub/oauth_callback --cookie atelier-session \
        --clients 4 --duration 10 --users 1000 --issuer http://127.0.0.1:Q

Each client loops for DURATION seconds: a fresh cookie jar (a new browser), the hub's login URL,
the provider's redirects and its login form (user bench<k>, k cycling over USERS), back to the
hub's callback, whose answer must be a redirect that sets the hub's session cookie COOKIE. A login
is counted when it does; any other answer is an error (reported, and the run fails on errors).
Prints one JSON object: logins, errors, seconds, logins/s, the median and p90 of a login in ms,
and the median of the callback request alone (the hub's share: code exchange, ID token and user
info, the user's row, the session). Standard library only.
"""

import argparse
import http.client
import json
import re
import statistics
import sys
import threading
import time
import urllib.parse
from http.cookies import SimpleCookie


class Browser:
    """Cookies per host:port (enough for two loopback origins), no redirect following."""

    def __init__(self):
        self.jars = {}
        self.conns = {}

    def request(self, method, url, form=None):
        u = urllib.parse.urlsplit(url)
        origin = (u.hostname, u.port)
        jar = self.jars.setdefault(origin, {})
        headers = {"Accept": "text/html"}
        if jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = self.conns.get(origin) or http.client.HTTPConnection(*origin, timeout=30)
        self.conns[origin] = conn
        path = u.path + (f"?{u.query}" if u.query else "")
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        set_cookies = resp.headers.get_all("Set-Cookie") or []
        for raw in set_cookies:
            for name, morsel in SimpleCookie(raw).items():
                if morsel["expires"] and "1970" in morsel["expires"] or morsel["max-age"] == "0":
                    jar.pop(name, None)
                else:
                    jar[name] = morsel.value
        location = resp.getheader("Location")
        if location:
            location = urllib.parse.urljoin(url, location)
        return resp.status, location, data.decode("utf-8", "replace"), set_cookies

    def close(self):
        for conn in self.conns.values():
            conn.close()


def login(hub, login_path, callback_prefix, cookie, user):
    """One login; returns (total seconds, callback seconds)."""
    b = Browser()
    try:
        t0 = time.perf_counter()
        status, url, body, _ = b.request("GET", hub + login_path)
        if status not in (302, 303) or not url:
            raise RuntimeError(f"login start: {status} {body[:200]}")
        for _ in range(12):
            if url.startswith(callback_prefix):
                t1 = time.perf_counter()
                status, _, body, cookies = b.request("GET", url)
                done = time.perf_counter()
                if status not in (302, 303) or not any(c.startswith(cookie + "=") for c in cookies):
                    raise RuntimeError(f"callback: {status} {cookies} {body[:300]}")
                return done - t0, done - t1
            status, nxt, body, _ = b.request("GET", url)
            if status == 200 and 'name="login"' in body:
                action = re.search(r'action="([^"]+)"', body).group(1)
                action = urllib.parse.urljoin(url, action)
                status, nxt, body, _ = b.request(
                    "POST", action, {"prompt": "login", "login": user, "password": "x"}
                )
            if status not in (302, 303) or not nxt:
                raise RuntimeError(f"provider at {url}: {status} {body[:200]}")
            url = nxt
        raise RuntimeError("no redirect back to the hub")
    finally:
        b.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hub", required=True)
    p.add_argument("--login-path", required=True)
    p.add_argument("--callback-prefix", required=True)
    p.add_argument("--cookie", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--first-user", type=int, default=0)
    a = p.parse_args()

    lock = threading.Lock()
    totals, callbacks, errors = [], [], []
    counter = [a.first_user]
    stop_at = time.perf_counter() + a.duration

    def client():
        while time.perf_counter() < stop_at:
            with lock:
                k = counter[0]
                counter[0] += 1
            user = f"bench{k % a.users}"
            try:
                total, callback = login(a.hub, a.login_path, a.callback_prefix, a.cookie, user)
                with lock:
                    totals.append(total)
                    callbacks.append(callback)
            except Exception as e:  # noqa: BLE001 (reported below)
                with lock:
                    errors.append(f"{user}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    ms = sorted(t * 1000 for t in totals) or [0.0]
    cb = sorted(t * 1000 for t in callbacks) or [0.0]
    json.dump(
        {
            "logins": len(totals),
            "errors": len(errors),
            "first_errors": errors[:3],
            "seconds": round(seconds, 3),
            "logins_per_s": round(len(totals) / seconds, 2),
            "median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[max(0, int(len(ms) * 0.9) - 1)], 2),
            "callback_median_ms": round(statistics.median(cb), 2),
            "next_user": counter[0],
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
