#!/usr/bin/env bash
# Hub benchmark, all on 127.0.0.1, in one run: Atelier's hub against JupyterHub 6.1.1, through the
# REST API that JupyterHub's own tools call (jupyterhub-singleuser, jupyterhub-idle-culler), on
# each database engine in turn (ENGINES="sqlite postgres" by default).
#
#   JupyterHub 6.1.1   from the peers venv (.peers/venv, .ci/peers-requirements.txt), SQLite in a
#                      fresh directory or a fresh PostgreSQL database, DummyAuthenticator, an
#                      instant spawner (servers ready at once, at one tiny always-200 HTTP server
#                      its wait_up polls), no proxy (bench/hub/jupyterhub_config.py)
#   atelier hub        examples/bench_hub.rs (cargo build --release --example bench_hub): `atelier
#                      hub` on backend::instant (servers ready at once), SQLite in a fresh
#                      directory or a fresh PostgreSQL database
# PostgreSQL: the shared server at PG_URL (default postgres://postgres@127.0.0.1:5432), one
# database per hub and run (bench_jh_<ts>, bench_at_<ts>), dropped at the end.
#
# Both get the same service token with the same scopes (the idle culler's: `bench` in
# c.JupyterHub.services + load_roles; `--service bench=...` + ATELIER_SERVICE_BENCH_TOKEN), and a
# second service `benchadm` that populates them identically through the API (USERS users,
# GROUP_COUNT groups of GROUP_SIZE, RUNNING default servers started: bench/hub/populate.py,
# bench/hub/spawn.py); a token of user u0 is requested from each (the kind jupyterhub-singleuser
# holds). Then wrk, each hub in turn, DURATION seconds per cell at each of CONNS connections:
#   whoami        GET  /hub/api/user with u0's hub-made token (singleuser, on every request)
#   whoami-svc    GET  /hub/api/user with the configured service token
#   ready         GET  /hub/api/users?state=ready&limit=200&offset=<0, 200, ...>, pagination Accept
#                 header: the culler's walk over the users with a ready server, page after page
#   page          GET  /hub/api/users?limit=200, pagination Accept header (all users, first page)
#   user          GET  /hub/api/users/<random user>
#   activity      POST /hub/api/users/<random user>/activity {"last_activity": now} (singleuser)
# Every endpoint is checked with curl on both hubs first (2xx, 200 users on the pages, RUNNING
# ready users in all).
# On PostgreSQL, the ready page's floor: its statements (ready_page.sql, ready_count.sql) run by
# pgbench alone on Atelier's database at each connection count, as pages per second.
# Also: startup time of each hub to its first 200 on /hub/api (fresh database), RSS after the runs,
# load average before and after each engine.
#
# CPU layout (PIN=1, the default on 2+ cores): wrk on CPU 0, the hub under test on CPU 1, as in
# bench/proxy. PIN=0: all share all cores.
#
# Usage: bench/hub/run.sh   (env: DURATION=5 CONNS="1 16" USERS=10000 RUNNING=2000 GROUP_COUNT=20
#                                 GROUP_SIZE=50 ENGINES="sqlite postgres"
#                                 KINDS="whoami whoami-svc ready page user activity" PIN=1
#                                 PROFILE=0 TRUST_TOKENS=0 PG_URL=postgres://postgres@127.0.0.1:5432
#                                 ATELIER_BIN=<path to a prebuilt bench_hub, skips the build>)
# ENGINE=sqlite (or postgres) is ENGINES with one engine.
# TRUST_TOKENS=1 sets JupyterHub's trust_user_provided_tokens: the configured service token is then
# hashed with one round, as the token of a service JupyterHub starts itself (z2jh's culler) is.
# PROFILE=1 runs each kind once more under a profiler (JupyterHub: py-spy, set PYSPY=/path if it is
# not on PATH; Atelier: perf) and keeps the summaries in results/<timestamp>-profiles.txt (and
# JupyterHub's collapsed stacks in results/<timestamp>-py-spy/).
# Report: printed and kept in bench/hub/results/<UTC timestamp>.txt (git-ignored).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-5}
CONNS=${CONNS:-"1 16"}
USERS=${USERS:-10000}
RUNNING=${RUNNING:-2000}
GROUP_COUNT=${GROUP_COUNT:-20}
GROUP_SIZE=${GROUP_SIZE:-50}
ENGINES=${ENGINES:-${ENGINE:-"sqlite postgres"}}
KINDS=${KINDS:-"whoami whoami-svc ready page user activity"}
PIN=${PIN:-1}
TRUST_TOKENS=${TRUST_TOKENS:-0}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
LOAD_PIN=(); HUB_PIN=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  LOAD_PIN=(taskset -c 0); HUB_PIN=(taskset -c 1)
  LAYOUT="pinned: wrk on CPU 0, the hub under test on CPU 1"
else
  LAYOUT="unpinned: wrk and the hub share all $(nproc) cores"
fi
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# jupyterhub-idle-culler's scopes (its README), admin:users to cull users too.
SCOPES="list:users,read:users:activity,read:servers,delete:servers,admin:users"
ADMIN_SCOPES="admin:users,admin:servers,admin:groups,tokens"

log() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "installing wrk (apt)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
fi
VENV="$ROOT/.peers/venv"
REQ="$ROOT/.ci/peers-requirements.txt"
if ! [ -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null; then
  log "installing Python peers into $VENV (as .ci/test.sh does)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.requirements"
fi
JH_VERSION=$("$VENV/bin/jupyterhub" --version)
if [ -n "${ATELIER_BIN:-}" ]; then
  ATELIER=$ATELIER_BIN
else
  log "building atelier's bench_hub (release)"
  (cd "$ROOT" && cargo build -q --release --example bench_hub)
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  ATELIER="$TARGET_DIR/release/examples/bench_hub"
fi
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo "+uncommitted")
for engine in $ENGINES; do
  case $engine in sqlite | postgres) ;; *) log "unknown engine $engine (sqlite, postgres)"; exit 1 ;; esac
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TS=$(date -u +%Y%m%dT%H%M%SZ)
TS_DB=$(tr 'A-Z' 'a-z' <<<"$TS")

# --- processes -------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/atelier-bench-hub.XXXXXX)
PIDS=()
DATABASES=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${DATABASES[@]}"; do
    psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
now() { date +%s.%N; }
# wait_200 URL PID -> prints the seconds since $START when URL first answers 200
wait_200() {
  for _ in $(seq 1 3000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; then
      python3 -c "print(f'{$(now) - $START:.2f}')"; return 0
    fi
    kill -0 "$2" 2>/dev/null || { log "process $2 exited"; return 1; }
    sleep 0.02
  done
  log "no 200 from $1"; return 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
new_database() {
  psql -q "$PG_URL/postgres" -c "CREATE DATABASE $1" >/dev/null
  DATABASES+=("$1")
}

# Where every instant server "runs": JupyterHub's wait_up polls it (Atelier's instant backend
# asks nothing of it).
INSTANT_PORT=$(free_port)
python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$INSTANT_PORT" &
PIDS+=("$!")
INSTANT_URL="http://127.0.0.1:$INSTANT_PORT"

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
INFO="$WORK/info.txt"
: >"$INFO"
PROFILE_OUT=
if [ "${PROFILE:-0}" = 1 ]; then
  PYSPY=${PYSPY:-$(command -v py-spy || true)}
  [ -n "$PYSPY" ] || { log "PROFILE=1 needs py-spy (PYSPY=/path/to/py-spy)"; exit 1; }
  command -v perf >/dev/null || { log "PROFILE=1 needs perf"; exit 1; }
  PROFILE_OUT="$WORK/profiles.txt"; : >"$PROFILE_OUT"
fi

# check HUB TOKEN METHOD PATH [BODY] -> the body of the answer in $WORK/answer; fails on non-2xx
check() {
  local hub=$1 tok=$2 method=$3 path=$4 body=${5:-} code
  local args=(-s -o "$WORK/answer" -w '%{http_code}' -X "$method" -H "Authorization: token $tok"
    -H "Accept: application/jupyterhub-pagination+json")
  [ -n "$body" ] && args+=(-H "Content-Type: application/json" -d "$body")
  code=$(curl "${args[@]}" "${URL[$hub]}$path")
  if [ "${code:0:1}" != 2 ]; then
    log "$hub: $method $path answered $code: $(head -c 300 "$WORK/answer")"; return 1
  fi
  log "$hub: $method $path: $code"
}

# run_wrk ENGINE HUB KIND CONNS -> appends "engine hub kind conns rps p50ms errors"
run_wrk() {
  local engine=$1 hub=$2 kind=$3 conns=$4 threads=2 tok=$TOKEN out lua_kind=$3
  [ "$conns" -lt 2 ] && threads=1
  case $kind in
    whoami) tok=${USER_TOKEN[$hub]} ;;
    whoami-svc) lua_kind=whoami ;;
  esac
  out=$(BENCH_TOKEN=$tok BENCH_KIND=$lua_kind BENCH_USERS=$USERS BENCH_RUNNING=$RUNNING "${LOAD_PIN[@]}" \
    wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s --latency -s "$HERE/request.lua" \
    "${URL[$hub]}" 2>&1)
  local rps p50 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$engine" "$hub" "$kind" "$conns" "${rps:-0}" "${p50:-0}" "${errors:-}" >>"$RESULTS"
  log "$(printf '%-8s %-10s %-10s c=%-3s %9s req/s  p50 %8s ms %s' "$engine" "$hub" "$kind" "$conns" "$rps" "$p50" "$errors")"
}

declare -A URL USER_TOKEN PID_OF
for engine in $ENGINES; do
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  # --- JupyterHub ----------------------------------------------------------------------------
  mkdir -p "$WORK/$engine/jh" "$WORK/$engine/atelier"
  JH_DB_URL=; AT_DB_URL="sqlite://$WORK/$engine/atelier/atelier.sqlite"
  if [ "$engine" = postgres ]; then
    new_database "bench_jh_$TS_DB"; new_database "bench_at_$TS_DB"
    JH_DB_URL="${PG_URL/postgres:\/\//postgresql+psycopg2://}/bench_jh_$TS_DB"
    AT_DB_URL="$PG_URL/bench_at_$TS_DB"
  fi
  JH_PORT=$(free_port)
  log "$engine: starting JupyterHub $JH_VERSION"
  START=$(now)
  (cd "$WORK/$engine/jh" && BENCH_WORK="$WORK/$engine/jh" BENCH_JH_PUBLIC_PORT=$(free_port) \
    BENCH_JH_HUB_PORT=$JH_PORT BENCH_JH_DB_URL=$JH_DB_URL BENCH_TARGET=$INSTANT_URL \
    BENCH_TOKEN=$TOKEN BENCH_SCOPES=$SCOPES BENCH_ADMIN_TOKEN=$ADMIN_TOKEN BENCH_ADMIN_SCOPES=$ADMIN_SCOPES \
    BENCH_TRUST_TOKENS=$TRUST_TOKENS PATH="$VENV/bin:$PATH" \
    exec "${HUB_PIN[@]}" "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" >"$WORK/$engine/jh/log" 2>&1) &
  JH_PID=$!; PIDS+=("$JH_PID")
  JH_START=$(wait_200 "http://127.0.0.1:$JH_PORT/hub/api" "$JH_PID") || { tail -n 30 "$WORK/$engine/jh/log" >&2; exit 1; }
  log "$engine: JupyterHub: first 200 on /hub/api after $JH_START s (pid $JH_PID)"

  # --- Atelier -------------------------------------------------------------------------------
  AT_PORT=$(free_port)
  log "$engine: starting atelier hub (bench_hub, instant backend)"
  START=$(now)
  (cd "$WORK/$engine/atelier" && ATELIER_SERVICE_BENCH_TOKEN=$TOKEN ATELIER_SERVICE_BENCHADM_TOKEN=$ADMIN_TOKEN \
    exec "${HUB_PIN[@]}" "$ATELIER" \
    --bind "127.0.0.1:$AT_PORT" --database-url "$AT_DB_URL" \
    --state-dir "$WORK/$engine/atelier/state" --public-url "http://127.0.0.1:$(free_port)" \
    --service "bench=$SCOPES" --service "benchadm=$ADMIN_SCOPES" --instant-target "$INSTANT_URL" \
    >"$WORK/$engine/atelier/log" 2>&1) &
  AT_PID=$!; PIDS+=("$AT_PID")
  AT_START=$(wait_200 "http://127.0.0.1:$AT_PORT/hub/api" "$AT_PID") || { tail -n 30 "$WORK/$engine/atelier/log" >&2; exit 1; }
  log "$engine: atelier: first 200 on /hub/api after $AT_START s (pid $AT_PID)"

  # --- population ----------------------------------------------------------------------------
  URL[jupyterhub]="http://127.0.0.1:$JH_PORT"; URL[atelier]="http://127.0.0.1:$AT_PORT"
  PID_OF[jupyterhub]=$JH_PID; PID_OF[atelier]=$AT_PID
  POP=()
  for hub in jupyterhub atelier; do
    log "$engine: $hub: $USERS users, $GROUP_COUNT groups of $GROUP_SIZE, $RUNNING servers"
    out=$(python3 "$HERE/populate.py" "${URL[$hub]}/hub/api" "$ADMIN_TOKEN" "$USERS" "$GROUP_COUNT" \
      "$GROUP_SIZE" u0 "$WORK/$hub-user-token")
    out2=$(python3 "$HERE/spawn.py" "${URL[$hub]}/hub/api" "$ADMIN_TOKEN" "$USERS" "$RUNNING")
    log "$engine: $hub: $out; $out2"; POP+=("$hub: $out; $out2")
    USER_TOKEN[$hub]=$(cat "$WORK/$hub-user-token")
  done

  # PostgreSQL: both databases vacuumed and analyzed, as autovacuum leaves a deployment's
  # within a minute of a change this size (inserts past autovacuum_vacuum_insert_threshold).
  # JupyterHub's population takes minutes, so autovacuum may have reached its tables before
  # the cells; Atelier's takes seconds, and its planner would otherwise plan on the statistics
  # of empty tables, with no visibility map for index-only scans.
  if [ "$engine" = postgres ]; then
    for db in "bench_jh_$TS_DB" "bench_at_$TS_DB"; do psql -q "$PG_URL/$db" -c "VACUUM ANALYZE"; done
    log "$engine: both databases vacuumed and analyzed"
  fi

  # --- checks: every endpoint answers 2xx on both hubs before it is timed ---------------------
  for hub in jupyterhub atelier; do
    check "$hub" "${USER_TOKEN[$hub]}" GET /hub/api/user
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["name"]=="u0", d' "$WORK/answer"
    check "$hub" "$TOKEN" GET /hub/api/user
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["name"]=="bench", d' "$WORK/answer"
    check "$hub" "$TOKEN" GET "/hub/api/users?limit=200"
    python3 - "$WORK/answer" "$USERS" "$GROUP_COUNT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
items, total = d["items"], d["_pagination"]["total"]
assert len(items) == min(200, int(sys.argv[2])), f"{len(items)} users on the page"
assert total == int(sys.argv[2]), f"total {total}"
PY
    if [ "$RUNNING" -gt 0 ]; then
      check "$hub" "$TOKEN" GET "/hub/api/users?state=ready&limit=200&offset=200"
      python3 - "$WORK/answer" "$RUNNING" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
items, total, running = d["items"], d["_pagination"]["total"], int(sys.argv[2])
assert total == running, f"total {total}"
assert len(items) == min(200, max(0, running - 200)), f"{len(items)} users on the page"
assert all(u["servers"][""]["ready"] for u in items), "a user without a ready server"
assert all("last_activity" in u["servers"][""] for u in items), "no server activity"
PY
    fi
    check "$hub" "$TOKEN" GET "/hub/api/users/u$((USERS - 1))"
    check "$hub" "$TOKEN" POST /hub/api/users/u1/activity \
      "{\"last_activity\": \"$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)\"}"
  done

  # --- wrk -----------------------------------------------------------------------------------
  for hub in jupyterhub atelier; do
    for kind in $KINDS; do
      for c in $CONNS; do
        run_wrk "$engine" "$hub" "$kind" "$c"
      done
    done
  done
  JH_RSS=$(rss_kib "$JH_PID"); AT_RSS=$(rss_kib "$AT_PID")

  # --- PostgreSQL alone: the floor of the culler's page (ready_page.sql, ready_count.sql: the
  # statements Atelier's hub runs, kept equal by a test) run by pgbench, pinned as wrk is, on
  # Atelier's database, both hubs idle. One connection: the page statement alone, as the hub runs
  # the total beside it on a second connection; at more: both per page. What a hub reading the
  # page from this PostgreSQL could reach at best.
  if [ "$engine" = postgres ] && [ "$RUNNING" -gt 0 ] && grep -qw ready <<<"$KINDS"; then
    cat "$HERE/ready_page.sql" "$HERE/ready_count.sql" >"$WORK/ready_both.sql"
    for c in $CONNS; do
      script="$WORK/ready_both.sql"; [ "$c" -lt 2 ] && script="$HERE/ready_page.sql"
      tps=$("${LOAD_PIN[@]}" pgbench -n -M prepared -c "$c" -j "$([ "$c" -lt 2 ] && echo 1 || echo 2)" \
        -T "$DURATION" -D pages="$(( (RUNNING + 199) / 200 ))" -D limit=201 -f "$script" \
        "$PG_URL/bench_at_$TS_DB" 2>&1 | awk '/^tps = / {print $3}')
      jh=$(awk -F'\t' -v c="$c" '$1 == "postgres" && $2 == "jupyterhub" && $3 == "ready" && $4 == c {print $5}' "$RESULTS")
      at=$(awk -F'\t' -v c="$c" '$1 == "postgres" && $2 == "atelier" && $3 == "ready" && $4 == c {print $5}' "$RESULTS")
      line=$(python3 -c 'import sys; t, j, a = (float(x or 0) for x in sys.argv[1:4]); print(f"{t:.0f} pages/s; as a ratio to JupyterHub: {t / j:.1f}x (Atelier: {a / j:.1f}x, {100 * a / t:.0f} % of the floor)" if j and t else f"{t:.0f} pages/s")' "$tps" "$jh" "$at")
      echo "[$engine] PostgreSQL alone, the ready page's statements by pgbench at $c connection(s): $line" >>"$INFO"
      log "$engine: PostgreSQL alone, c=$c: $line"
    done
  fi

  # --- optional profiles (PROFILE=1): each kind again at the highest connection count,
  # JupyterHub under py-spy, Atelier under perf. Not in the table.
  if [ -n "$PROFILE_OUT" ]; then
    maxc=$(tr ' ' '\n' <<<"$CONNS" | sort -n | tail -n1)
    for kind in $KINDS; do
      for hub in jupyterhub atelier; do
        if [ "$hub" = jupyterhub ]; then
          "$PYSPY" record -p "$JH_PID" -r 250 -d "$DURATION" -f raw -o "$WORK/prof.raw" >/dev/null 2>&1 &
        else
          perf record -q -F 999 -g -p "$AT_PID" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        fi
        prof=$!
        run_wrk "$engine" "$hub" "$kind" "$maxc" >/dev/null 2>&1
        wait "$prof" || true
        sed -i '$d' "$RESULTS" # not a timed cell
        {
          echo "== $engine, $hub, $kind, $maxc connections"
          if [ "$hub" = jupyterhub ]; then
            python3 "$HERE/profile_summary.py" "$WORK/prof.raw" "$DURATION" 250
            mkdir -p "$WORK/raw"; cp "$WORK/prof.raw" "$WORK/raw/jupyterhub-$engine-$kind.txt"
          else
            echo "by object:"
            perf report -i "$WORK/perf.data" --no-children --sort dso --stdio --percent-limit 1 2>/dev/null \
              | grep -v '^#' | grep -v '^$' | head -n 8
            echo "by symbol:"
            perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none --percent-limit 1 2>/dev/null \
              | grep -v '^#' | grep -v '^$' | head -n 30
            echo "inclusive (children):"
            perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none --percent-limit 3 2>/dev/null \
              | grep -v '^#' | grep -v '^$' | head -n 40
          fi
          echo
        } >>"$PROFILE_OUT"
        log "profiled $engine $hub $kind"
      done
    done
  fi

  stop_pid "$JH_PID"; stop_pid "$AT_PID"
  LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
  {
    echo "[$engine] load average $LOAD_BEFORE before, $LOAD_AFTER after"
    for p in "${POP[@]}"; do echo "[$engine] populated $p"; done
    echo "[$engine] startup to the first 200 on /hub/api (fresh database): JupyterHub $JH_START s, atelier $AT_START s"
    echo "[$engine] RSS after the runs: JupyterHub $((JH_RSS / 1024)) MiB, atelier $((AT_RSS / 1024)) MiB"
  } >>"$INFO"
done

# --- report ------------------------------------------------------------------------------------
mkdir -p "$HERE/results"
REPORT="$HERE/results/$TS.txt"
{
  echo "wrk ${DURATION}s per cell, 127.0.0.1, $(nproc) cores; JupyterHub $JH_VERSION (instant spawner, no proxy)" \
    "vs atelier hub $COMMIT (bench_hub, instant backend); engines: $ENGINES;" \
    "$USERS users, $RUNNING with a ready server, $GROUP_COUNT groups of $GROUP_SIZE"
  echo "CPU layout: $LAYOUT"
  if [ "$TRUST_TOKENS" = 1 ]; then
    echo "JupyterHub: trust_user_provided_tokens = True (the service token hashed with 1 round, as a generated one)"
  else
    echo "JupyterHub: trust_user_provided_tokens = False (default: the configured service token hashed with 16,384 rounds)"
  fi
  echo "service token scopes: $SCOPES"
  cat "$INFO"
  python3 - "$RESULTS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
r = {(g, h, k, c): (float(rps), float(p50), e.strip()) for g, h, k, c, rps, p50, e in rows}
what = {
    "whoami": "GET /hub/api/user (u0's hub-made token)",
    "whoami-svc": "GET /hub/api/user (configured service token)",
    "ready": "GET /hub/api/users?state=ready (pages of 200)",
    "page": "GET /hub/api/users?limit=200 (paginated)",
    "user": "GET /hub/api/users/<random>",
    "activity": "POST /hub/api/users/<random>/activity",
}
engines = list(dict.fromkeys(g for g, _, _, _ in r))
kinds = list(dict.fromkeys(k for _, _, k, _ in r))
conns = sorted({int(c) for _, _, _, c in r})
warnings = []
for g in engines:
    print()
    print(f"[{g}] {'endpoint':46} {'conns':>5} | {'JupyterHub req/s':>16} {'p50 ms':>8} | "
          f"{'Atelier req/s':>13} {'p50 ms':>8} | {'Atelier/JH':>10} {'p50 A/JH':>8}")
    for k in kinds:
        for c in conns:
            j = r.get((g, "jupyterhub", k, str(c)))
            a = r.get((g, "atelier", k, str(c)))
            if not j or not a:
                continue
            ratio = f"{a[0] / j[0]:.1f}x" if j[0] else "-"
            p50r = f"{a[1] / j[1]:.3f}" if j[1] else "-"
            print(f"[{g}] {what.get(k, k):46} {c:>5} | {j[0]:>16.0f} {j[1]:>8.2f} | {a[0]:>13.0f} "
                  f"{a[1]:>8.2f} | {ratio:>10} {p50r:>8}")
            for hub, v in (("jupyterhub", j), ("atelier", a)):
                if v[2]:
                    warnings.append(f"{g} {hub} {k} c={c}: {v[2]}")
                if v[0] == 0:
                    warnings.append(f"{g} {hub} {k} c={c}: no result from wrk")
print()
for w in warnings:
    print("WARNING", w)
PY
} >"$REPORT"
if [ -n "$PROFILE_OUT" ]; then
  cp "$PROFILE_OUT" "${REPORT%.txt}-profiles.txt"
  cp -r "$WORK/raw" "${REPORT%.txt}-py-spy" # JupyterHub's collapsed stacks (flamegraph input)
fi
cat "$REPORT"
log "report: $REPORT"
