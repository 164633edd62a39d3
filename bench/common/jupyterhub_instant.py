"""JupyterHub 6.1.1 pieces the benchmarks share (bench/spawn, bench/login): an instant spawner and
no proxy, as ../shared/PEERS.md describes "JupyterHub 6.1.1 as a reference". A configuration file
imports them with `sys.path.insert(0, <this directory>)`.
"""

import os

from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner


class InstantSpawner(Spawner):
    """A server that is ready the moment it is asked for: `start` returns its URL at once.

    The URL is `$BENCH_TARGET`, where an always-200 HTTP server answers JupyterHub's wait_up.
    """

    _running = False

    async def start(self):
        self._running = True
        return os.environ["BENCH_TARGET"]

    async def poll(self):
        return None if self._running else 0

    async def stop(self):
        self._running = False

    def load_state(self, state):
        super().load_state(state)
        # A server in the database after a restart is one JupyterHub started: it still "runs".
        self._running = True


class NoProxy(Proxy):
    """No proxy: JupyterHub's routes go nowhere (its API is hit directly on the hub port)."""

    should_start = False

    async def add_route(self, routespec, target, data):
        return None

    async def delete_route(self, routespec):
        return None

    async def get_all_routes(self):
        return {}
