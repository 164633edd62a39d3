#!/usr/bin/env bash
# Spawn overhead, all on 127.0.0.1, in one run: Atelier's hub on its instant backend against
# JupyterHub 6.1.1 with an instant spawner, through the REST API (POST /hub/api/users/<u>/server).
#
#   JupyterHub 6.1.1   from the peers venv (.peers/venv, .ci/peers-requirements.txt), SQLite,
#                      bench/spawn/jupyterhub_config.py: a Spawner whose start returns a URL at
#                      once (an always-200 server there, which JupyterHub's wait_up asks), no proxy
#   atelier            examples/bench_hub.rs (release): `atelier hub` with backend::instant, SQLite
#
# Both get the same service token with the same scopes. bench/spawn/drive.py creates the users,
# makes WARMUP starts (not counted), then SEQUENTIAL starts one after the other and CONCURRENT at
# once, each timed from its POST to the server being ready (201, or 202 and then `ready`).
#
# CPU layout (PIN=1, the default on 2+ cores): the driver (and JupyterHub's target server) on CPU
# 0, the hub under test on CPU 1, as in bench/hub. PIN=0: all share all cores.
#
# Usage: bench/spawn/run.sh   (env: SEQUENTIAL=20 CONCURRENT=100 WARMUP=3 ROUNDS=3 PIN=1 HUB_BIN=)
# Report: printed and kept in bench/spawn/results/<UTC timestamp>.txt (git-ignored).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../common/lib.sh
. "$ROOT/bench/common/lib.sh"
SEQUENTIAL=${SEQUENTIAL:-20}
CONCURRENT=${CONCURRENT:-100}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
PIN=${PIN:-1}
LOAD_PIN=(); HUB_PIN=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  LOAD_PIN=(taskset -c 0); HUB_PIN=(taskset -c 1)
  LAYOUT="pinned: the driver on CPU 0, the hub under test on CPU 1"
else
  LAYOUT="unpinned: the driver and the hub share all $(nproc) cores"
fi
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
SCOPES="admin:users,admin:servers,list:users,read:users,read:servers"


VENV="$ROOT/.peers/venv"
REQ="$ROOT/.ci/peers-requirements.txt"
if ! [ -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null; then
  log "installing Python peers into $VENV (as .ci/test.sh does)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.requirements"
fi
JH_VERSION=$("$VENV/bin/jupyterhub" --version)
bench_hub_binary
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

bench_workdir spawn

# The server JupyterHub's instant servers "run" at (its wait_up asks it once per start).
TARGET_PORT=$(free_port)
"${LOAD_PIN[@]}" python3 -m http.server "$TARGET_PORT" --bind 127.0.0.1 --directory "$WORK" \
  >"$WORK/target.log" 2>&1 &
PIDS+=("$!")

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for hub in jupyterhub atelier; do
    dir="$WORK/$hub-$round"; mkdir -p "$dir"
    port=$(free_port)
    if [ "$hub" = jupyterhub ]; then
      (cd "$dir" && BENCH_WORK="$dir" BENCH_JH_PUBLIC_PORT=$(free_port) BENCH_JH_HUB_PORT=$port \
        BENCH_TARGET="http://127.0.0.1:$TARGET_PORT" BENCH_TOKEN=$TOKEN BENCH_SCOPES=$SCOPES \
        PATH="$VENV/bin:$PATH" exec "${HUB_PIN[@]}" "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" \
        >"$dir/log" 2>&1) &
    else
      (cd "$dir" && ATELIER_SERVICE_BENCH_TOKEN=$TOKEN exec "${HUB_PIN[@]}" "$ATELIER" \
        --bind "127.0.0.1:$port" --database-url "sqlite://$dir/atelier.sqlite" \
        --state-dir "$dir/state" --public-url "http://127.0.0.1:$(free_port)" \
        --instant-target "http://127.0.0.1:$TARGET_PORT" --service "bench=$SCOPES" >"$dir/log" 2>&1) &
    fi
    pid=$!; PIDS+=("$pid")
    wait_200 "http://127.0.0.1:$port/hub/api" "$pid" || { tail -n 30 "$dir/log" >&2; exit 1; }
    log "round $round, $hub: $SEQUENTIAL sequential, $CONCURRENT concurrent starts"
    out=$("${LOAD_PIN[@]}" python3 "$HERE/drive.py" --api "http://127.0.0.1:$port/hub/api" \
      --token "$TOKEN" --prefix "r$round" --warmup "$WARMUP" --sequential "$SEQUENTIAL" \
      --concurrent "$CONCURRENT") || { tail -n 30 "$dir/log" >&2; exit 1; }
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    log "$hub: $out (RSS ${rss} KiB)"
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["hub"]=sys.argv[2]; d["round"]=int(sys.argv[3]); d["rss_kib"]=int(sys.argv[4]); print(json.dumps(d))' \
      "$out" "$hub" "$round" "$rss" >>"$RESULTS"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$HERE/results"
REPORT="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
python3 - "$RESULTS" <<PY | tee "$REPORT"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("Spawn overhead: atelier ${COMMIT} (instant backend) vs JupyterHub ${JH_VERSION} (instant spawner)")
print("${LAYOUT}; SQLite; load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}")
print("${SEQUENTIAL} sequential and ${CONCURRENT} concurrent starts per round, ${WARMUP} warm-up starts first; ${ROUNDS} rounds")
print()
print("| round | hub | sequential median ms | p90 | concurrent: all ready ms | median | p90 | RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    s, c = r["sequential"], r["concurrent"]
    print(f"| {r['round']} | {r['hub']} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {c['total_ms']:.1f} | {c['median_ms']:.1f} | {c['p90_ms']:.1f} | {r['rss_kib']/1024:.0f} |")
print()
def med(hub, f):
    return statistics.median(f(r) for r in rows if r["hub"] == hub)
for label, f in [("sequential median", lambda r: r["sequential"]["median_ms"]),
                 ("${CONCURRENT} concurrent, all ready", lambda r: r["concurrent"]["total_ms"])]:
    jh, at = med("jupyterhub", f), med("atelier", f)
    print(f"{label}: JupyterHub {jh:.2f} ms, Atelier {at:.2f} ms: Atelier / JupyterHub = {at/jh:.3f} (1/{jh/at:.0f})")
PY
log "report: $REPORT"
