#!/usr/bin/env bash
# Logins per second through OpenID Connect, all on 127.0.0.1, in one run: Atelier's hub
# (--oidc-config) against JupyterHub 6.1.1 with oauthenticator's GenericOAuthenticator, both on the
# same provider: the npm oidc-provider of e2e/oidc (OpenID Certified), its development login form.
#
#   provider           node e2e/oidc/provider.mjs (pinned by e2e/oidc/package-lock.json), users
#                      bench0 … bench<USERS-1> in group ocean-physics (OIDC_BENCH_USERS)
#   JupyterHub 6.1.1   + oauthenticator 17.4.0 in bench/login/.venv (created here, pinned), SQLite,
#                      GenericOAuthenticator (allowed_groups, manage_groups), no proxy
#   atelier            examples/bench_hub.rs (release; the login does not touch the backend),
#                      SQLite, an OIDC provider with allowed_groups
#
# bench/login/drive.py runs CLIENTS browsers for DURATION seconds per cell: each login is a fresh
# cookie jar, the hub's login URL, the provider's form, and the hub's callback, which must set the
# session cookie. Both hubs log in the same user names in the same order (the first login of a
# name creates its user). Per cell: logins/s, the median and p90 login, the median callback (the
# hub's own request), and CPU milliseconds per login of the hub and of the provider
# (/proc/<pid>/stat), since the provider's work is in every login.
#
# CPU layout (PIN=1, the default on 2+ cores): the driver and the provider on CPU 0, the hub under
# test on CPU 1. PIN=0: all share all cores.
#
# Usage: bench/login/run.sh   (env: DURATION=10 CLIENTS="1 4" USERS=1000 PIN=1 HUB_BIN=)
# Report: printed and kept in bench/login/results/<UTC timestamp>.txt (git-ignored).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../common/lib.sh
. "$ROOT/bench/common/lib.sh"
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 4"}
USERS=${USERS:-1000}
PIN=${PIN:-1}
LOAD_PIN=(); HUB_PIN=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  LOAD_PIN=(taskset -c 0); HUB_PIN=(taskset -c 1)
  LAYOUT="pinned: the driver and the provider on CPU 0, the hub under test on CPU 1"
else
  LAYOUT="unpinned: all share all $(nproc) cores"
fi
CLIENT_ID=bench
CLIENT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')

VENV="$HERE/.venv"
PINS="jupyterhub==6.1.1 oauthenticator==17.4.0"
if ! [ -x "$VENV/bin/jupyterhub" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PINS" ]; then
  log "installing $PINS into $VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PINS
  echo "$PINS" >"$VENV/.pins"
fi
if [ ! -d "$ROOT/e2e/oidc/node_modules/oidc-provider" ]; then
  log "installing oidc-provider (npm ci in e2e/oidc)"
  (cd "$ROOT/e2e/oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
PROVIDER_VERSION=$(node -p "require('$ROOT/e2e/oidc/node_modules/oidc-provider/package.json').version")
bench_hub_binary
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

bench_workdir login
# cpu_ms PID -> user + system CPU time of the process so far, in ms
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }

JH_PORT=$(free_port); AT_PORT=$(free_port); OP_PORT=$(free_port)
ISSUER="http://127.0.0.1:$OP_PORT"
log "starting oidc-provider $PROVIDER_VERSION"
(cd "$ROOT/e2e/oidc" && OIDC_CLIENT_ID=$CLIENT_ID OIDC_CLIENT_SECRET=$CLIENT_SECRET \
  OIDC_BENCH_USERS=$USERS \
  OIDC_REDIRECT_URIS="http://127.0.0.1:$AT_PORT/hub/oauth_callback/bench,http://127.0.0.1:$JH_PORT/hub/oauth_callback" \
  exec "${LOAD_PIN[@]}" node provider.mjs "$OP_PORT" >"$WORK/provider.log" 2>&1) &
OP_PID=$!; PIDS+=("$OP_PID")
wait_200 "$ISSUER/.well-known/openid-configuration" "$OP_PID" || { tail -n 30 "$WORK/provider.log" >&2; exit 1; }

log "starting JupyterHub $("$VENV/bin/jupyterhub" --version) with GenericOAuthenticator"
mkdir -p "$WORK/jh" "$WORK/atelier"
(cd "$WORK/jh" && BENCH_WORK="$WORK/jh" BENCH_JH_PUBLIC_PORT=$(free_port) BENCH_JH_HUB_PORT=$JH_PORT \
  BENCH_ISSUER=$ISSUER BENCH_CLIENT_ID=$CLIENT_ID BENCH_CLIENT_SECRET=$CLIENT_SECRET \
  BENCH_TARGET="http://127.0.0.1:9" PATH="$VENV/bin:$PATH" \
  exec "${HUB_PIN[@]}" "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" >"$WORK/jh/log" 2>&1) &
JH_PID=$!; PIDS+=("$JH_PID")
wait_200 "http://127.0.0.1:$JH_PORT/hub/api" "$JH_PID" || { tail -n 30 "$WORK/jh/log" >&2; exit 1; }

log "starting atelier with an OIDC provider"
printf '%s\n' "$CLIENT_SECRET" >"$WORK/atelier/secret"
cat >"$WORK/atelier/oidc.yaml" <<YAML
providers:
  - name: bench
    display_name: Bench IdP
    issuer: $ISSUER
    client_id: $CLIENT_ID
    client_secret_file: $WORK/atelier/secret
    allowed_groups: [ocean-physics]
YAML
(cd "$WORK/atelier" && exec "${HUB_PIN[@]}" "$ATELIER" --bind "127.0.0.1:$AT_PORT" \
  --database-url "sqlite://$WORK/atelier/atelier.sqlite" --state-dir "$WORK/atelier/state" \
  --public-url "http://127.0.0.1:$AT_PORT" --oidc-config "$WORK/atelier/oidc.yaml" \
  >"$WORK/atelier/log" 2>&1) &
AT_PID=$!; PIDS+=("$AT_PID")
wait_200 "http://127.0.0.1:$AT_PORT/hub/api" "$AT_PID" || { tail -n 30 "$WORK/atelier/log" >&2; exit 1; }

declare -A PID_OF LOGIN_PATH CALLBACK COOKIE
PID_OF[jupyterhub]=$JH_PID; PID_OF[atelier]=$AT_PID
LOGIN_PATH[jupyterhub]=/hub/oauth_login; LOGIN_PATH[atelier]=/hub/oauth_login/bench
CALLBACK[jupyterhub]="http://127.0.0.1:$JH_PORT/hub/oauth_callback"
CALLBACK[atelier]="http://127.0.0.1:$AT_PORT/hub/oauth_callback/bench"
COOKIE[jupyterhub]=jupyterhub-hub-login; COOKIE[atelier]=atelier-session
declare -A PORT_OF; PORT_OF[jupyterhub]=$JH_PORT; PORT_OF[atelier]=$AT_PORT

RESULTS="$WORK/results.jsonl"; : >"$RESULTS"
for clients in $CLIENTS; do
  for hub in jupyterhub atelier; do
    hub_cpu=$(cpu_ms "${PID_OF[$hub]}"); op_cpu=$(cpu_ms "$OP_PID")
    out=$("${LOAD_PIN[@]}" python3 "$HERE/drive.py" --hub "http://127.0.0.1:${PORT_OF[$hub]}" \
      --login-path "${LOGIN_PATH[$hub]}" --callback-prefix "${CALLBACK[$hub]}" \
      --cookie "${COOKIE[$hub]}" --clients "$clients" --duration "$DURATION" --users "$USERS")
    hub_cpu=$(python3 -c "print($(cpu_ms "${PID_OF[$hub]}") - $hub_cpu)")
    op_cpu=$(python3 -c "print($(cpu_ms "$OP_PID") - $op_cpu)")
    log "$hub, $clients clients: $out (hub CPU ${hub_cpu} ms, provider CPU ${op_cpu} ms)"
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(hub=sys.argv[2], clients=int(sys.argv[3]), hub_cpu_ms=float(sys.argv[4]), op_cpu_ms=float(sys.argv[5])); print(json.dumps(d))' \
      "$out" "$hub" "$clients" "$hub_cpu" "$op_cpu" >>"$RESULTS"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$HERE/results"
REPORT="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
python3 - "$RESULTS" <<PY | tee "$REPORT"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("Logins through OpenID Connect: atelier ${COMMIT} vs JupyterHub 6.1.1 + oauthenticator 17.4.0 (GenericOAuthenticator)")
print("provider: oidc-provider ${PROVIDER_VERSION}; ${LAYOUT}; SQLite; ${DURATION} s per cell")
print("load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}")
print()
print("| clients | hub | logins | errors | logins/s | median ms | p90 ms | callback median ms | hub CPU ms / login | provider CPU ms / login |")
print("|---|---|---|---|---|---|---|---|---|---|")
by = {}
for r in rows:
    n = max(r["logins"], 1)
    by[(r["clients"], r["hub"])] = r
    print(f"| {r['clients']} | {r['hub']} | {r['logins']} | {r['errors']} | {r['logins_per_s']:.1f} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['callback_median_ms']:.2f} | {r['hub_cpu_ms']/n:.2f} | {r['op_cpu_ms']/n:.2f} |")
print()
for clients in sorted({c for c, _ in by}):
    jh, at = by[(clients, "jupyterhub")], by[(clients, "atelier")]
    cpu = lambda r: r["hub_cpu_ms"] / max(r["logins"], 1)
    print(f"{clients} clients: logins/s Atelier / JupyterHub = {at['logins_per_s']/max(jh['logins_per_s'], 0.01):.1f}x; "
          f"callback median {at['callback_median_ms']/max(jh['callback_median_ms'], 0.01):.2f}x; "
          f"hub CPU per login {cpu(at)/max(cpu(jh), 0.001):.3f}x (the hubs' cores could make "
          f"{1000/max(cpu(jh), 0.001):.0f} and {1000/max(cpu(at), 0.001):.0f} logins/s)")
for r in rows:
    for e in r["first_errors"]:
        print(f"WARNING {r['hub']} ({r['clients']} clients): {e}")
if any(r["errors"] for r in rows):
    sys.exit(1)
PY
log "report: $REPORT"
