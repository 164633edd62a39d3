#!/usr/bin/env bash
# Dask benchmark, all on 127.0.0.1, in one run: time from "Start" with two Dask workers to the
# first computed result (the sum of da.ones((4000, 4000), chunks=1000) in a real kernel of a real
# jupyterhub-singleuser, through Atelier's proxy), for
#
#   gateway   dask-gateway's local backend (dask-gateway-server 2026.3.0 from the peers venv,
#             UnsafeLocalBackend, JupyterHubAuthenticator on Atelier's hub): Gateway().new_cluster(),
#             scale(2) in the kernel, as a daskhub user does
#   atelier   Atelier's own local Dask cluster (issue 12, docs/plans/issue-12-dask.md §3): the start
#             asks user_options.dask = {enabled: true, workers: {min: 2, max: 2}}, the kernel runs
#             Client() on the workspace's scheduler
#
# interleaved (atelier, gateway, atelier, ...) so both see the same load; median, min, max and the
# ratio atelier / gateway are printed. While issue 12's local backend has not landed, the atelier
# half reports "not available" and the gateway half still runs.
#
# Usage: bench/dask/run.sh      (env: RUNS=3 KINDS="atelier gateway" ATELIER_BIN=path to skip
#                                the release build; ATELIER_PEERS_VENV=.peers/venv)
# The peers venv must hold .ci/peers-requirements.txt (.ci/test.sh provisions it).
# Report: printed and kept in bench/dask/results/<UTC timestamp>.txt (git-ignored).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
KINDS=${KINDS:-"atelier gateway"}
VENV=${ATELIER_PEERS_VENV:-$ROOT/.peers/venv}

log() { printf '==> %s\n' "$*" >&2; }

for bin in jupyterhub-singleuser dask-gateway-server dask python; do
  if [ ! -x "$VENV/bin/$bin" ]; then
    log "$VENV/bin/$bin is missing: run .ci/test.sh (or pip install -r .ci/peers-requirements.txt into $VENV)"
    exit 1
  fi
done
if [ -z "${ATELIER_BIN:-}" ]; then
  log "building atelier (release)"
  (cd "$ROOT" && cargo build -q --release --bin atelier)
  TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  ATELIER_BIN="$TARGET_DIR/release/atelier"
fi

mkdir -p "$HERE/results"
REPORT="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "bench/dask at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores"
  "$VENV/bin/python" -c 'import dask, distributed, dask_gateway, dask_gateway_server, jupyterhub; print(f"dask {dask.__version__}, distributed {distributed.__version__}, dask-gateway {dask_gateway.__version__}, dask-gateway-server {dask_gateway_server.__version__}, jupyterhub {jupyterhub.__version__}")'
  "$VENV/bin/python" "$HERE/bench.py" --venv "$VENV" --atelier "$ATELIER_BIN" --runs "$RUNS" --kinds "$KINDS"
} | tee "$REPORT"
log "report kept in $REPORT"
