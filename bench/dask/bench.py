"""Dask benchmark (bench/dask/run.sh): time from "Start" to the first computed result with two
Dask workers, through dask-gateway's local backend against Atelier's own local Dask cluster, in
one run, on 127.0.0.1.

Each sample: a fresh user is created, `POST /hub/api/users/<u>/server` is sent (the clock
starts), the server is awaited through the proxy, a kernel is created and one cell runs over its
WebSocket; the clock stops when the cell has printed the sum of `da.ones((4000, 4000),
chunks=1000)` (16,000,000) computed on two workers. Then the cluster and the server are stopped.

  gateway  the workspace's env is daskhub's (DASK_GATEWAY__*); the cell runs
           `Gateway().new_cluster()`, `scale(2)`, `wait_for_workers(2)`, the sum, `shutdown()`.
  atelier  the start asks `user_options.dask = {enabled, workers: {min: 2, max: 2}}` (issue 12's
           local backend, docs/plans/issue-12-dask.md §3); the cell runs `Client()` (from the
           workspace's DASK_SCHEDULER_ADDRESS and TLS settings), `wait_for_workers(2)`, the sum.
           A hub that refuses `user_options.dask`, or a workspace without
           DASK_SCHEDULER_ADDRESS, makes this half report "not available" (the rest still runs).

Run by bench/dask/run.sh, which passes the paths; prints the report on stdout.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import websocket  # websocket-client, a dependency of jupyter_server (in the peers venv)

SERVICE = "dask-gateway"
PREFIX = "/services/dask-gateway"
CELL_SUM = """
import dask.array as da
total = int(da.ones((4000, 4000), chunks=1000).sum().compute())
print(total, len(client.scheduler_info()["workers"]))
"""
CELLS = {
    "gateway": """
from dask_gateway import Gateway
gateway = Gateway()
cluster = gateway.new_cluster()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=300)
""" + CELL_SUM,
    "atelier": """
from distributed import Client
client = Client()
client.wait_for_workers(2, timeout=300)
""" + CELL_SUM,
}
# Issue 12's WorkspaceProfile.spec.dask (docs/plans/issue-12-dask.md §1).
DASK_PROFILE = """  dask:
    defaults: {enabled: false, workers: {min: 2, max: 2}}
    maxWorkers: 2
    maxWorkerResources: {cpu: "2", memory: 4Gi}
"""
TEARDOWN = {
    "gateway": "client.close()\ncluster.shutdown()\nprint('down')",
    "atelier": "client.close()\nprint('down')",
}


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, token=None, body=None, auth="token"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"{auth} {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text.strip() else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


def wait_http(url, what, proc=None, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); see its log")
        status, _ = http("GET", url)
        if status == 200:
            return
        time.sleep(0.1)
    raise SystemExit(f"{what}: no answer from {url} within {timeout} s")


class Stack:
    """dask-gateway-server, `atelier hub` and `atelier proxy`, each in its own process group."""

    def __init__(self, args, work):
        self.args, self.work, self.procs = args, work, []
        self.hub_port, self.proxy_port = free_port(), free_port()
        self.admin_token, self.gateway_token = uuid.uuid4().hex, uuid.uuid4().hex
        self.gw_api, self.gw_http, self.gw_tcp = free_port(), free_port(), free_port()
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        self.public = f"http://127.0.0.1:{self.proxy_port}"

    def spawn(self, name, argv, env):
        logf = open(os.path.join(self.work, f"{name}.log"), "ab")
        proc = subprocess.Popen(
            argv, env=env, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
            cwd=self.work, start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def start(self):
        venv, work = self.args.venv, self.work
        dask = os.path.join(venv, "bin", "dask")
        clusters = os.path.join(work, "clusters")
        with open(os.path.join(work, "dask_gateway_config.py"), "w") as f:
            f.write(f"""c.DaskGateway.address = "127.0.0.1:{self.gw_api}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = "{self.hub}/hub/api"
c.JupyterHubAuthenticator.jupyterhub_service_name = "{SERVICE}"
c.Proxy.address = "127.0.0.1:{self.gw_http}"
c.Proxy.tcp_address = "127.0.0.1:{self.gw_tcp}"
c.Proxy.prefix = "{PREFIX}"
c.UnsafeLocalBackend.clusters_directory = "{clusters}"
c.LocalClusterConfig.scheduler_cmd = ["{dask}", "scheduler"]
c.LocalClusterConfig.worker_cmd = ["{dask}", "worker"]
c.LocalClusterConfig.worker_cores = 1
c.LocalClusterConfig.worker_memory = "1 G"
""")
        base_env = {"PATH": os.environ["PATH"], "HOME": work, "LANG": "C.UTF-8"}
        gw = self.spawn(
            "dask-gateway",
            [os.path.join(venv, "bin", "dask-gateway-server"), "-f",
             os.path.join(work, "dask_gateway_config.py")],
            dict(base_env, JUPYTERHUB_API_TOKEN=self.gateway_token),
        )
        service_url = f"http://127.0.0.1:{self.gw_http}"
        wait_http(f"{service_url}{PREFIX}/api/health", "dask-gateway-server", gw)

        # Issue 12's profile fields (unit A); a hub that does not know them refuses the
        # catalogue at start: then it runs without them and the atelier half is unavailable.
        self.dask_profile = self.start_hub(service_url, dask=True)
        if not self.dask_profile:
            self.start_hub(service_url, dask=False)
        proxy = self.spawn("proxy", [
            self.args.atelier, "proxy", f"--bind=127.0.0.1:{self.proxy_port}",
            f"--database-url=sqlite://{work}/atelier.sqlite", f"--default-target={self.hub}",
            "--refresh-ms=250", f"--service={SERVICE}@{service_url}",
        ], dict(base_env, RUST_LOG="warn"))
        wait_http(f"{self.public}/_atelier/proxy/health", "atelier proxy", proxy)
        status, _ = http("POST", f"{self.hub}/hub/api/groups/dask", self.admin_token)
        assert status in (201, 409), status

    def start_hub(self, service_url, dask):
        """Starts the hub with (or without) the profile's `dask`; whether it came up."""
        venv, work = self.args.venv, self.work
        base_env = {"PATH": os.environ["PATH"], "HOME": work, "LANG": "C.UTF-8"}
        catalog = os.path.join(work, "catalog")
        os.makedirs(catalog, exist_ok=True)
        with open(os.path.join(catalog, "profile.yaml"), "w") as f:
            f.write(f"""apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: pangeo
spec:
  displayName: Pangeo
  image: registry.example.org/atelier/jupyter-pangeo:2025.06
  env:
    DASK_GATEWAY__ADDRESS: '{self.public}{PREFIX}'
    DASK_GATEWAY__PROXY_ADDRESS: 'gateway://127.0.0.1:{self.gw_tcp}'
    DASK_GATEWAY__PUBLIC_ADDRESS: '{PREFIX}/'
    DASK_GATEWAY__AUTH__TYPE: jupyterhub
{DASK_PROFILE if dask else ""}---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata:
  name: cpu
spec:
  purpose: interactive
---
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata:
  name: batch
spec:
  purpose: batch
""")
        with open(os.path.join(work, "roles.yaml"), "w") as f:
            f.write(f"""- name: dask-users
  scopes: ['access:services!service={SERVICE}']
  groups: [dask]
- name: server
  scopes: ['users:activity!user', 'access:servers!server', 'access:services!service={SERVICE}']
""")
        db = f"sqlite://{work}/atelier.sqlite"
        admin_scopes = ("admin:users,admin:groups,admin:servers,access:servers,tokens,"
                        "list:users,read:users")
        hub_env = dict(base_env, RUST_LOG="warn",
                       ATELIER_SERVICE_BENCH_TOKEN=self.admin_token,
                       ATELIER_SERVICE_DASK_GATEWAY_TOKEN=self.gateway_token)
        self.hub_proc = self.spawn("hub", [
            self.args.atelier, "hub", f"--bind=127.0.0.1:{self.hub_port}",
            f"--database-url={db}", f"--public-url={self.public}",
            f"--state-dir={work}/state",
            f"--server-command={os.path.join(venv, 'bin', 'jupyterhub-singleuser')}",
            "--spawn-timeout=300", f"--catalog={catalog}",
            f"--roles={work}/roles.yaml", f"--service=bench={admin_scopes}",
            f"--service={SERVICE}@{service_url}=",
        ], hub_env)
        try:
            wait_http(f"{self.hub}/hub/api/", "atelier hub", self.hub_proc)
            return True
        except SystemExit as e:
            if not dask:
                raise
            log(f"{e}: the hub refuses the profile's `dask` (unit A not landed?); "
                "starting it without")
            self.procs.remove(("hub", self.hub_proc))
            return False

    def admin(self, method, path, body=None):
        return http(method, f"{self.hub}{path}", self.admin_token, body)

    def stop(self):
        for _, proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_cell(public, user, token, kernel, code, timeout=600):
    """Runs `code` on `kernel` of `user`'s default server: (stdout, error or None)."""
    ws = websocket.create_connection(
        f"ws://{public.split('://', 1)[1]}/user/{user}/api/kernels/{kernel}/channels",
        header=[f"Authorization: token {token}"], timeout=timeout,
    )
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out, error, replied, idle = "", None, False, False
    while not (replied and idle):
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out += content["text"]
        elif kind == "error":
            error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
        elif kind == "execute_reply":
            replied = True
            if content["status"] != "ok" and error is None:
                error = f"{content.get('ename')}: {content.get('evalue')}"
    ws.close()
    return out, error


def sample(stack, kind, i):
    """One start-to-first-result; seconds, or the reason it is not available."""
    user = f"{kind}{i}"
    status, body = stack.admin("POST", f"/hub/api/users/{user}")
    assert status == 201, (status, body)
    status, body = stack.admin("POST", "/hub/api/groups/dask/users", {"users": [user]})
    assert status == 200, (status, body)
    status, body = stack.admin("POST", f"/hub/api/users/{user}/tokens", {
        "note": "bench", "scopes": [f"servers!user={user}", f"access:servers!user={user}"]})
    assert status == 201, (status, body)
    token = body["token"]
    options = {"profile": "pangeo"}
    if kind == "atelier" and not stack.dask_profile:
        return None, "the hub does not know WorkspaceProfile.spec.dask (unit A not landed?)"
    if kind == "atelier":
        options["dask"] = {"enabled": True, "workers": {"min": 2, "max": 2}}
    t0 = time.monotonic()
    status, body = http("POST", f"{stack.hub}/hub/api/users/{user}/server", token,
                        {"user_options": options})
    if status not in (201, 202):
        return None, f"start refused: {status} {body}"
    end = t0 + 300
    while True:
        status, body = http("GET", f"{stack.public}/user/{user}/api/status", token)
        if status == 200:
            break
        _, model = stack.admin("GET", f"/hub/api/users/{user}")
        server = (model or {}).get("servers", {}).get("") if isinstance(model, dict) else None
        if time.monotonic() > end or (server is None and time.monotonic() - t0 > 5):
            return None, f"server not up: {status} {body}"
        time.sleep(0.05)
    status, body = http("POST", f"{stack.public}/user/{user}/api/kernels", token,
                        {"name": "python3"})
    assert status == 201, (status, body)
    kernel = body["id"]
    if kind == "atelier":
        out, err = run_cell(stack.public, user, token, kernel,
                            "import os\nprint('DASK_SCHEDULER_ADDRESS' in os.environ)")
        if err or out.strip() != "True":
            stop_server(stack, user, token)
            return None, "the workspace has no DASK_SCHEDULER_ADDRESS (unit C not landed?)"
    out, err = run_cell(stack.public, user, token, kernel, CELLS[kind])
    elapsed = time.monotonic() - t0
    if err or out.split() != ["16000000", "2"]:
        stop_server(stack, user, token)
        return None, f"cell failed: {err or out!r}"
    run_cell(stack.public, user, token, kernel, TEARDOWN[kind])
    stop_server(stack, user, token)
    return elapsed, None


def stop_server(stack, user, token):
    http("DELETE", f"{stack.hub}/hub/api/users/{user}/server", token)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        _, model = stack.admin("GET", f"/hub/api/users/{user}")
        if isinstance(model, dict) and not model.get("servers"):
            return
        time.sleep(0.2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--venv", required=True)
    p.add_argument("--atelier", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kinds", default="atelier gateway")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="atelier-bench-dask-")
    stack = Stack(args, work)
    results = {}
    try:
        stack.start()
        log(f"stack up in {work}")
        for i in range(args.runs):
            # Interleaved: both halves see the same machine load.
            for kind in args.kinds.split():
                if results.get(kind, {}).get("unavailable"):
                    continue
                seconds, why = sample(stack, kind, i)
                entry = results.setdefault(kind, {"times": []})
                if seconds is None:
                    entry["unavailable"] = why
                    log(f"{kind}: {why}")
                else:
                    entry["times"].append(seconds)
                    log(f"{kind} run {i + 1}: {seconds:.2f} s")
    finally:
        stack.stop()
    print(f"Start -> first result with 2 Dask workers ({args.runs} runs each, interleaved; "
          f"load {open('/proc/loadavg').read().split()[:3]})")
    print(f"{'backend':<10} {'median s':>9} {'min s':>7} {'max s':>7}  note")
    medians = {}
    for kind in args.kinds.split():
        entry = results.get(kind, {"times": []})
        times = entry["times"]
        if times:
            medians[kind] = statistics.median(times)
            print(f"{kind:<10} {medians[kind]:>9.2f} {min(times):>7.2f} {max(times):>7.2f}  "
                  f"{'; '.join(f'{t:.2f}' for t in times)}")
        else:
            print(f"{kind:<10} {'-':>9} {'-':>7} {'-':>7}  not available: "
                  f"{entry.get('unavailable', 'not run')}")
    if "atelier" in medians and "gateway" in medians:
        print(f"ratio atelier / gateway (median): {medians['atelier'] / medians['gateway']:.2f}")
    else:
        print("ratio: needs both halves")
    import shutil
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
