# JupyterHub 6.1.1 for bench/hub/run.sh: loopback, SQLite in a fresh directory or a fresh
# PostgreSQL database, servers that are ready at once, no proxy.
# Everything variable comes from the environment run.sh sets.
import os
import sys

c = get_config()  # noqa: F821 (injected by JupyterHub)
# The instant spawner (servers at BENCH_TARGET, a tiny always-200 server JupyterHub's wait_up asks)
# and the no-op proxy that bench/spawn and bench/login use too.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from jupyterhub_instant import InstantSpawner, NoProxy  # noqa: E402

work = os.environ["BENCH_WORK"]
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PUBLIC_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_HUB_PORT']}"
# sqlite:///<dir>/jupyterhub.sqlite, or postgresql+psycopg2://postgres@127.0.0.1:5432/bench_jh_<ts>
# (psycopg2-binary, pinned in .ci/peers-requirements.txt).
c.JupyterHub.db_url = os.environ.get("BENCH_JH_DB_URL") or f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{work}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{work}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
# The culler's page: GET /hub/api/users?limit=200 answers 200 users (JupyterHub's maximum page).
c.JupyterHub.api_page_max_limit = 200

c.JupyterHub.spawner_class = InstantSpawner
c.JupyterHub.proxy_class = NoProxy
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
# Stopping 2,000 servers at exit is of no interest: run.sh kills the hub.
c.JupyterHub.cleanup_servers = False

# The token as a deployment gives it to jupyterhub-idle-culler (z2jh does the same): a service
# with an api_token in the configuration. JupyterHub does not trust the entropy of configured
# tokens (trust_user_provided_tokens = False, the default) and hashes them with 16,384 rounds of
# SHA-512; tokens it generates itself (servers', users') get one round.
# A service JupyterHub starts itself (`command`, as z2jh runs the culler) gets a generated token;
# TRUST_TOKENS=1 in run.sh gives the configured token the same single round.
# `benchadm` only populates (creates users and groups, starts servers); it is never timed.
c.JupyterHub.trust_user_provided_tokens = os.environ.get("BENCH_TRUST_TOKENS") == "1"
c.JupyterHub.services = [
    {"name": "bench", "api_token": os.environ["BENCH_TOKEN"]},
    {"name": "benchadm", "api_token": os.environ["BENCH_ADMIN_TOKEN"]},
]
c.JupyterHub.load_roles = [
    {
        "name": "bench",
        "scopes": os.environ["BENCH_SCOPES"].split(","),
        "services": ["bench"],
    },
    {
        "name": "benchadm",
        "scopes": os.environ["BENCH_ADMIN_SCOPES"].split(","),
        "services": ["benchadm"],
    },
]
