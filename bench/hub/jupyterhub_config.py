# JupyterHub 6.1.1 for bench/hub/run.sh: loopback, SQLite in a fresh directory, no spawning.
# Everything variable comes from the environment run.sh sets.
import os

c = get_config()  # noqa: F821 (injected by JupyterHub)

work = os.environ["BENCH_WORK"]
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PUBLIC_PORT']}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_HUB_PORT']}"
c.JupyterHub.db_url = f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{work}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{work}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
# The culler's page: GET /hub/api/users?limit=200 answers 200 users (JupyterHub's maximum page).
c.JupyterHub.api_page_max_limit = 200

# JupyterHub starts and stops its proxy (configurable-http-proxy from bench/proxy/node_modules).
c.ConfigurableHTTPProxy.command = [os.environ["BENCH_CHP"]]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.auth_token = "bench-chp-token"

# The token as a deployment gives it to jupyterhub-idle-culler (z2jh does the same): a service
# with an api_token in the configuration. JupyterHub does not trust the entropy of configured
# tokens (trust_user_provided_tokens = False, the default) and hashes them with 16,384 rounds of
# SHA-512; tokens it generates itself (servers', users') get one round.
# A service JupyterHub starts itself (`command`, as z2jh runs the culler) gets a generated token;
# TRUST_TOKENS=1 in run.sh gives the configured token the same single round.
c.JupyterHub.trust_user_provided_tokens = os.environ.get("BENCH_TRUST_TOKENS") == "1"
c.JupyterHub.services = [{"name": "bench", "api_token": os.environ["BENCH_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "bench",
        "scopes": os.environ["BENCH_SCOPES"].split(","),
        "services": ["bench"],
    }
]
