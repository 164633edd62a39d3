# JupyterHub 6.1.1 for bench/spawn/run.sh: loopback, SQLite in a fresh directory, an instant
# spawner and no proxy, as ../shared/PEERS.md describes "JupyterHub 6.1.1 as a reference".
# Everything variable comes from the environment run.sh sets.
import os
import sys

c = get_config()  # noqa: F821 (injected by JupyterHub)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from jupyterhub_instant import InstantSpawner, NoProxy  # noqa: E402

work = os.environ["BENCH_WORK"]

c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PUBLIC_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_HUB_PORT']}"
c.JupyterHub.db_url = os.environ.get("BENCH_JH_DB_URL") or f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{work}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{work}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = InstantSpawner
c.JupyterHub.proxy_class = NoProxy
c.JupyterHub.cleanup_servers = True
# 100 concurrent starts must not be throttled by the default limit of 100 pending spawns.
c.JupyterHub.concurrent_spawn_limit = 0
# The service token costs one round of hashing, as a generated token does (see bench/hub).
c.JupyterHub.trust_user_provided_tokens = True
c.JupyterHub.services = [{"name": "bench", "api_token": os.environ["BENCH_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "bench",
        "scopes": os.environ["BENCH_SCOPES"].split(","),
        "services": ["bench"],
    }
]
