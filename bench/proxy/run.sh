#!/usr/bin/env bash
# Proxy benchmark, all on 127.0.0.1, in one run:
#   nginx                          the upstream, and (hit directly) the ceiling
#   configurable-http-proxy 5.3.0  JupyterHub's proxy, the rival
#   nginx as a reverse proxy       the reference: a second nginx, one worker on the proxy's core,
#                                  proxy_pass to the upstream with keep-alive, the same routes
#                                  (a map of the N users) and token check; what a C proxy reaches
#   Atelier's proxy                examples/bench_proxy.rs: in-memory routes, token check on
# wrk at 1, 64 and 512 connections for a 100 B and a 1 MiB response, with 10 and 10,000 routes
# (each request to a random route; nginx measured beside each cell), then each proxy under route
# churn (CHURN route changes per second while wrk runs), then the RSS of each proxy holding idle
# WebSockets.
#
# CPU layout (PIN=1, the default on 2+ cores): the load side (wrk, nginx, the churn client) is
# pinned to CPU 0 and the proxy under test to CPU 1, so the proxy gets one core of its own, as on
# a proxy node, and the ceiling (wrk straight at nginx) is what the load side can do on CPU 0.
# PIN=0 lets the scheduler mix everything on all cores (the earlier runs' layout).
#
# Usage: bench/proxy/run.sh            (env: DURATION=5 CONNS="1 64 512" ROUTES="10 10000"
#                                             SIZES="small large" WS_IDLE=1000 PIN=1 CHURN=100
#                                             NGINX_PROXY_BUFFERING=on)
# Installs what is missing: nginx and wrk (apt), configurable-http-proxy (npm, pinned in
# package.json, into bench/proxy/node_modules); builds the bench binary with --release.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-5}
CONNS=${CONNS:-"1 64 512"}
ROUTES=${ROUTES:-"10 10000"}
SIZES=${SIZES:-"small large"}
WS_IDLE=${WS_IDLE:-1000}
CHURN=${CHURN:-100}
PIN=${PIN:-1}
LOAD_PIN=(); PROXY_PIN=(); NGINX_WORKERS=auto
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  LOAD_PIN=(taskset -c 0); PROXY_PIN=(taskset -c 1); NGINX_WORKERS=1
  LAYOUT="pinned: wrk, nginx and the churn client on CPU 0, the proxy under test on CPU 1"
else
  LAYOUT="unpinned: wrk, nginx and the proxy share all $(nproc) cores"
fi
TOKEN=bench
CHP_TOKEN=bench-chp-token

log() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------------
apt_updated=
need_apt() { # need_apt COMMAND PACKAGE
  if ! command -v "$1" >/dev/null && [ ! -x "/usr/sbin/$1" ]; then
    if [ -z "$apt_updated" ]; then apt-get update -q >/dev/null; apt_updated=1; fi
    log "installing $2 (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
  fi
}
need_apt wrk wrk
need_apt nginx nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CHP_JS="$HERE/node_modules/configurable-http-proxy/bin/configurable-http-proxy"
if [ ! -f "$CHP_JS" ]; then
  log "installing configurable-http-proxy (npm, pinned)"
  (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
CHP_VERSION=$(node -p "require('$HERE/node_modules/configurable-http-proxy/package.json').version")
log "building examples/bench_proxy (release)"
(cd "$ROOT" && cargo build -q --release --example bench_proxy)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BENCH="$TARGET_DIR/release/examples/bench_proxy"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Other work on the machine skews everything: the report shows the load around the run.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- processes -------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/atelier-bench-proxy.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_http() { # wait_http URL
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  log "no answer from $1"; return 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

mkdir -p "$WORK/www" "$WORK/tmp"
head -c 100 /dev/urandom >"$WORK/www/small"
head -c 1048576 /dev/urandom >"$WORK/www/large"
chmod 755 "$WORK/www"; chmod 644 "$WORK/www/"*

NGINX_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 100000000;
  client_body_temp_path $WORK/tmp/body;
  proxy_temp_path $WORK/tmp/proxy;
  fastcgi_temp_path $WORK/tmp/fastcgi;
  uwsgi_temp_path $WORK/tmp/uwsgi;
  scgi_temp_path $WORK/tmp/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
    location / { rewrite ^/user/[^/]+/(.*)\$ /\$1 break; }
  }
}
EOF
"${LOAD_PIN[@]}" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
wait_http "$NGINX_URL/small"

# nginx as a reverse proxy, the reference contender: one worker pinned like the proxy under test,
# a regex location for /user/<name>/, the N users in a map (a hash lookup, as Atelier's route
# table; an unknown user gets 503), the bench token checked (403 without it), the headers Atelier
# sets, and keep-alive connections to the upstream. Buffering: proxy_buffering on with 4 x 256 KiB
# buffers in memory (proxy_max_temp_file_size 0: never a temporary file), the same 256 KiB reads
# as Atelier's DEFAULT_BUFFER; NGINX_PROXY_BUFFERING=off streams through one 256 KiB buffer.
NGINX_PROXY_BUFFERING=${NGINX_PROXY_BUFFERING:-on}
start_nginx_proxy() { # start_nginx_proxy ROUTES TARGET -> sets NP_PID NP_PORT
  NP_PORT=$(free_port)
  local dir="$WORK/np-$NP_PORT"
  mkdir -p "$dir/tmp"
  python3 -c 'import sys; [print(f"    u{i} 1;") for i in range(int(sys.argv[1]))]' "$1" >"$dir/users.map"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 100000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  map_hash_max_size 262144;
  map_hash_bucket_size 64;
  map \$user \$known {
    default 0;
    include $dir/users.map;
  }
  upstream backend {
    server ${2#http://};
    keepalive 1024;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$NP_PORT backlog=4096;
    location ~ ^/user/(?<user>[^/]+)/ {
      if (\$known = 0) { return 503; }
      if (\$http_authorization != "token $TOKEN") { return 403; }
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_buffering $NGINX_PROXY_BUFFERING;
      proxy_buffer_size 256k;
      proxy_buffers 4 256k;
      proxy_busy_buffers_size 512k;
      proxy_max_temp_file_size 0;
    }
    location / { return 404; }
  }
}
EOF
  "${PROXY_PIN[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" &
  NP_PID=$!; PIDS+=("$NP_PID")
  wait_http "http://127.0.0.1:$NP_PORT/"
  # The worker, for its RSS (the master only forks it).
  NP_WORKER=$(pgrep -P "$NP_PID" | head -n1)
}
start_chp() { # start_chp ROUTES TARGET -> sets CHP_PID CHP_PORT
  CHP_PORT=$(free_port); local api; api=$(free_port); CHP_API="http://127.0.0.1:$api"
  CONFIGPROXY_AUTH_TOKEN=$CHP_TOKEN "${PROXY_PIN[@]}" node "$CHP_JS" --ip 127.0.0.1 --port "$CHP_PORT" \
    --api-ip 127.0.0.1 --api-port "$api" --default-target "$NGINX_URL" --log-level error \
    >"$WORK/chp.log" 2>&1 &
  CHP_PID=$!; PIDS+=("$CHP_PID")
  wait_http "http://127.0.0.1:$api/api/routes" || { cat "$WORK/chp.log" >&2; return 1; }
  "$BENCH" chp-routes --api "http://127.0.0.1:$api" --auth "$CHP_TOKEN" --routes "$1" --target "$2" >/dev/null
}
start_atelier() { # start_atelier ROUTES TARGET [CHURN] -> sets AT_PID AT_PORT
  AT_PORT=$(free_port)
  "${PROXY_PIN[@]}" "$BENCH" proxy --bind "127.0.0.1:$AT_PORT" --routes "$1" --target "$2" \
    --hub "$NGINX_URL" --token "$TOKEN" --churn "${3:-0}" >"$WORK/atelier.log" 2>&1 &
  AT_PID=$!; PIDS+=("$AT_PID")
  wait_http "http://127.0.0.1:$AT_PORT/_atelier/proxy/health"
}

# --- HTTP: wrk ---------------------------------------------------------------------------------
cat >"$WORK/random-route.lua" <<'EOF'
local n = tonumber(os.getenv("BENCH_ROUTES"))
local file = os.getenv("BENCH_FILE")
local headers = { ["Authorization"] = "token bench" }
request = function()
  return wrk.format("GET", "/user/u" .. math.random(0, n - 1) .. "/" .. file, headers)
end
EOF

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# run_wrk NAME PORT ROUTES FILE CONNS -> appends "name routes file conns rps p50ms errors"
run_wrk() {
  local name=$1 port=$2 routes=$3 file=$4 conns=$5 threads=2 out
  [ "$conns" -lt 2 ] && threads=1
  out=$(BENCH_ROUTES=$routes BENCH_FILE=$file "${LOAD_PIN[@]}" wrk -t"$threads" -c"$conns" -d"${DURATION}s" \
    --latency -s "$WORK/random-route.lua" "http://127.0.0.1:$port" 2>&1)
  local rps p50 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$routes" "$file" "$conns" "${rps:-0}" "${p50:-0}" "${errors:-}" >>"$RESULTS"
  log "$(printf '%-8s routes=%-5s %-5s c=%-3s %10s req/s  p50 %8s ms %s' "$name" "$routes" "$file" "$conns" "$rps" "$p50" "$errors")"
}

for routes in $ROUTES; do
  log "$routes routes: starting configurable-http-proxy $CHP_VERSION and Atelier"
  start_chp "$routes" "$NGINX_URL"
  start_nginx_proxy "$routes" "$NGINX_URL"
  start_atelier "$routes" "$NGINX_URL"
  for file in $SIZES; do
    for c in $CONNS; do
      # The ceiling is measured next to each cell, so that other load on the machine weighs
      # on all four alike.
      for p in "nginx $NGINX_PORT" "chp $CHP_PORT" "ngxproxy $NP_PORT" "atelier $AT_PORT"; do
        set -- $p
        BENCH_ROUTES=$routes BENCH_FILE=$file "${LOAD_PIN[@]}" wrk -t1 -c4 -d1s -s "$WORK/random-route.lua" "http://127.0.0.1:$2" >/dev/null # warm-up
        run_wrk "$1" "$2" "$routes" "$file" "$c"
      done
    done
  done
  log "RSS with $routes routes: chp $(rss_kib "$CHP_PID") KiB, nginx-proxy worker $(rss_kib "$NP_WORKER") KiB, atelier $(rss_kib "$AT_PID") KiB"
  echo "rss_routes	$routes	$(rss_kib "$CHP_PID")	$(rss_kib "$AT_PID")	$(rss_kib "$NP_WORKER")" >>"$WORK/rss.tsv"
  if grep -q . "$WORK/np-$NP_PORT/error.log"; then log "nginx-proxy errors: $(tail -n1 "$WORK/np-$NP_PORT/error.log")"; fi
  stop_pid "$CHP_PID"; stop_pid "$NP_PID"; stop_pid "$AT_PID"
done

# --- route churn: servers starting and stopping while wrk runs -------------------------------
# Each proxy is measured without churn, then with CHURN route changes per second (add one route,
# remove the one added 100 changes earlier): CHP through its REST API, Atelier through its route
# source, refreshed every second as in production. 64 connections, 100 B, the largest route count.
if [ "$CHURN" -gt 0 ]; then
  routes=$(tr ' ' '\n' <<<"$ROUTES" | sort -n | tail -n1)
  log "churn: $CHURN route changes/s with $routes routes"
  start_chp "$routes" "$NGINX_URL"
  start_atelier "$routes" "$NGINX_URL" "$CHURN"
  BENCH_ROUTES=$routes BENCH_FILE=small "${LOAD_PIN[@]}" wrk -t1 -c4 -d1s -s "$WORK/random-route.lua" "http://127.0.0.1:$CHP_PORT" >/dev/null
  run_wrk chp-still "$CHP_PORT" "$routes" small 64
  "${LOAD_PIN[@]}" "$BENCH" chp-churn --api "$CHP_API" --auth "$CHP_TOKEN" --churn "$CHURN" \
    --target "$NGINX_URL" >"$WORK/chp-churn.log" 2>&1 &
  CHURN_PID=$!; PIDS+=("$CHURN_PID")
  sleep 2
  run_wrk chp-churn "$CHP_PORT" "$routes" small 64
  stop_pid "$CHURN_PID"
  if grep -q . "$WORK/chp-churn.log"; then log "chp churn client: $(tail -n1 "$WORK/chp-churn.log")"; fi
  stop_pid "$CHP_PID"
  # Atelier churns from its start; for the still run, a second proxy without churn.
  run_wrk atelier-churn "$AT_PORT" "$routes" small 64
  stop_pid "$AT_PID"
  start_atelier "$routes" "$NGINX_URL" 0
  BENCH_ROUTES=$routes BENCH_FILE=small "${LOAD_PIN[@]}" wrk -t1 -c4 -d1s -s "$WORK/random-route.lua" "http://127.0.0.1:$AT_PORT" >/dev/null
  run_wrk atelier-still "$AT_PORT" "$routes" small 64
  stop_pid "$AT_PID"
fi

# --- idle WebSockets: RSS ----------------------------------------------------------------------
ECHO_PORT=$(free_port)
"$BENCH" ws-echo --bind "127.0.0.1:$ECHO_PORT" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
sleep 0.3
ws_rss() { # ws_rss NAME PID PORT -> appends "ws name count before after"
  local name=$1 pid=$2 port=$3 before after hold
  "$BENCH" ws-hold --url "ws://127.0.0.1:$port/user/u0/ws" --count 20 --hold-secs 0 >/dev/null # warm-up
  sleep 1
  before=$(rss_kib "$pid")
  "$BENCH" ws-hold --url "ws://127.0.0.1:$port/user/u0/ws" --count "$WS_IDLE" --hold-secs 30 >"$WORK/hold.out" 2>&1 &
  hold=$!; PIDS+=("$hold")
  for _ in $(seq 1 300); do grep -q '^ready' "$WORK/hold.out" && break; sleep 0.1; done
  grep -q "^ready $WS_IDLE" "$WORK/hold.out" || { cat "$WORK/hold.out" >&2; return 1; }
  sleep 2
  after=$(rss_kib "$pid")
  stop_pid "$hold"
  echo "ws	$name	$WS_IDLE	$before	$after" >>"$WORK/rss.tsv"
  log "$name: RSS $before KiB idle, $after KiB with $WS_IDLE idle WebSockets: $(( (after - before) * 1024 / WS_IDLE )) B each"
}
start_chp 10 "http://127.0.0.1:$ECHO_PORT"
ws_rss chp "$CHP_PID" "$CHP_PORT"
stop_pid "$CHP_PID"
start_atelier 10 "http://127.0.0.1:$ECHO_PORT"
ws_rss atelier "$AT_PID" "$AT_PORT"
stop_pid "$AT_PID"

# --- report ------------------------------------------------------------------------------------
mkdir -p "$HERE/results"
REPORT="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$RESULTS" "$WORK/rss.tsv" "$CHP_VERSION" "$DURATION" "$LOAD_BEFORE" "$LOAD_AFTER" "$LAYOUT" "$CHURN" >"$REPORT" <<'EOF'
import sys
results, rss, chp_version, duration, load_before, load_after, layout, churn = sys.argv[1:9]
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
r = {}
for name, routes, file, conns, rps, p50, errors in rows:
    r[(name, routes, file, conns)] = (float(rps), float(p50), errors.strip())
print(f"wrk {duration}s per run, 127.0.0.1, {__import__('os').cpu_count()} cores; "
      f"configurable-http-proxy {chp_version}; every request to a random route; "
      f"load average {load_before} before, {load_after} after")
print(f"CPU layout: {layout}")
print("ceil: nginx hit directly; ngx-proxy: nginx as a reverse proxy on the proxy's core (the reference)")
print(f"{'body':5} {'routes':>6} {'conns':>5} | {'ceil req/s':>10} {'p50 ms':>7} | "
      f"{'CHP req/s':>10} {'p50 ms':>7} | {'ngx-proxy':>10} {'p50 ms':>7} | {'Atelier req/s':>13} {'p50 ms':>7} | "
      f"{'A/ceil':>6} {'ngxp/ceil':>9} {'CHP/ceil':>8} | {'A/ngxp':>6} {'p50 A/ngxp':>10} | {'A/CHP':>5} {'p50 A/CHP':>9}")
errors = []
for (name, routes, file, conns), (rps, p50, err) in sorted(
        r.items(), key=lambda kv: (kv[0][2] != "small", int(kv[0][1]), int(kv[0][3]))):
    if err:
        errors.append(f"{name} {routes} {file} c={conns}: {err}")
    if name != "atelier":
        continue
    crps, cp50, _ = r.get(("chp", routes, file, conns), (0, 0, ""))
    nrps, np50, _ = r.get(("nginx", routes, file, conns), (0, 0, ""))
    xrps, xp50, _ = r.get(("ngxproxy", routes, file, conns), (0, 0, ""))
    body = "100B" if file == "small" else "1MiB"
    share = lambda a, b: f"{100 * a / b:.0f}%" if b else "-"
    ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
    print(f"{body:5} {routes:>6} {conns:>5} | {nrps:>10.0f} {np50:>7.2f} | {crps:>10.0f} {cp50:>7.2f} | "
          f"{xrps:>10.0f} {xp50:>7.2f} | {rps:>13.0f} {p50:>7.2f} | "
          f"{share(rps, nrps):>6} {share(xrps, nrps):>9} {share(crps, nrps):>8} | "
          f"{ratio(rps, xrps):>6} {ratio(p50, xp50):>10} | {ratio(rps, crps):>5} {ratio(p50, cp50):>9}")
print()
for name in ("chp", "atelier"):
    still = [(k, v) for k, v in r.items() if k[0] == f"{name}-still"]
    moving = [(k, v) for k, v in r.items() if k[0] == f"{name}-churn"]
    if still and moving:
        (_, routes, _, conns), (srps, sp50, _) = still[0]
        _, (crps, cp50, _) = moving[0]
        print(f"{name} under churn ({churn} route changes/s, {routes} routes, {conns} conns, 100 B): "
              f"{srps:.0f} -> {crps:.0f} req/s ({100 * crps / srps:.0f} %), "
              f"p50 {sp50:.2f} -> {cp50:.2f} ms")
print()
for line in open(rss):
    f = line.rstrip("\n").split("\t")
    if f[0] == "rss_routes":
        print(f"RSS after the HTTP runs with {f[1]} routes: CHP {int(f[2]) // 1024} MiB, "
              f"Atelier {int(f[3]) // 1024} MiB, nginx-proxy's worker {int(f[4]) // 1024} MiB")
    elif f[0] == "ws":
        name, n, before, after = f[1], int(f[2]), int(f[3]), int(f[4])
        print(f"{name}: {n} idle WebSockets add {(after - before) // 1024} MiB of RSS "
              f"({(after - before) * 1024 / n / 1024:.1f} KiB each; {before // 1024} MiB before)")
for e in errors:
    print("WARNING", e)
EOF
cat "$REPORT"
log "report: $REPORT"
