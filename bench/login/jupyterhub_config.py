# JupyterHub 6.1.1 for bench/login/run.sh: loopback, SQLite in a fresh directory, no proxy, and
# oauthenticator's GenericOAuthenticator on the same OpenID provider as Atelier's hub (the npm
# oidc-provider of e2e/oidc). Everything variable comes from the environment run.sh sets.
import os
import sys

c = get_config()  # noqa: F821 (injected by JupyterHub)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from jupyterhub_instant import InstantSpawner, NoProxy  # noqa: E402

work = os.environ["BENCH_WORK"]
issuer = os.environ["BENCH_ISSUER"]
hub = f"http://127.0.0.1:{os.environ['BENCH_JH_HUB_PORT']}"

c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PUBLIC_PORT']}"
c.JupyterHub.hub_bind_url = hub
c.JupyterHub.db_url = f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{work}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{work}/jupyterhub.pid"
c.JupyterHub.spawner_class = InstantSpawner
c.JupyterHub.proxy_class = NoProxy

c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = os.environ["BENCH_CLIENT_ID"]
c.GenericOAuthenticator.client_secret = os.environ["BENCH_CLIENT_SECRET"]
c.GenericOAuthenticator.oauth_callback_url = f"{hub}/hub/oauth_callback"
c.GenericOAuthenticator.authorize_url = f"{issuer}/auth"
c.GenericOAuthenticator.token_url = f"{issuer}/token"
c.GenericOAuthenticator.userdata_url = f"{issuer}/me"
c.GenericOAuthenticator.scope = ["openid", "profile", "email"]
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.allowed_groups = {"ocean-physics"}
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
