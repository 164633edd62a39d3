# Shell pieces bench/spawn/run.sh and bench/login/run.sh share. Source it after setting ROOT.
#   bench_hub_binary        sets ATELIER (HUB_BIN, or `cargo build --release --example bench_hub`)
#                           and COMMIT (what the report names)
#   bench_workdir NAME      sets WORK (a fresh /tmp directory) and PIDS; on exit kills PIDS, removes WORK
#   free_port, wait_200 URL PID, log MESSAGE

log() { printf '==> %s\n' "$*" >&2; }

bench_hub_binary() {
  if [ -n "${HUB_BIN:-}" ]; then
    ATELIER=$HUB_BIN  # a bench_hub built beforehand (e.g. copied aside while the tree changes)
    COMMIT="$HUB_BIN (given as HUB_BIN)"
    return 0
  fi
  log "building the hub with the instant backend (release)"
  (cd "$ROOT" && cargo build -q --release --example bench_hub)
  local target_dir
  target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  ATELIER="$target_dir/release/examples/bench_hub"
  COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src examples Cargo.toml Cargo.lock || echo "+uncommitted")
}

bench_workdir() {
  WORK=$(mktemp -d "/tmp/atelier-bench-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_200 URL PID: until URL answers 200 (a minute at most); fails if PID exits first
wait_200() {
  for _ in $(seq 1 3000); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || { log "process $2 exited"; return 1; }
    sleep 0.02
  done
  log "no 200 from $1"; return 1
}
