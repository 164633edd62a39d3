#!/usr/bin/env bash
# Operator benchmark, all on 127.0.0.1, in one run: `atelier operator` at HEAD against the
# baseline operator (default 46df150, before the informer caches), each against the in-memory
# API server of bench/operator/fake.rs, in shared and per-user namespace modes.
#
#   operator-bench    cargo run --release --example operator-bench (bench/operator/main.rs): seeds a
#                     NodePool, a WorkspaceProfile and N Workspaces (spread over USERS users; in
#                     per-user mode in their users' namespaces), starts the operator binary against
#                     the fake and measures: cold (until every Workspace has a status), unchanged (a
#                     no-op annotation on every Workspace, until quiet), status change (every pod
#                     Running and Ready, until every Workspace is Running); reconciles (the
#                     operator's atelier_workspace_reconciliations_total), requests by verb and
#                     resource (the fake's count), objects sent in LISTs, peak RSS (VmHWM), CPU.
#   baseline          `git worktree` of REV in a temporary directory, `cargo build --release`; the
#                     binary is kept in bench/operator/.baseline/<rev>/atelier (git-ignored).
#
# CPU layout (PIN=1, the default on 2+ cores): the harness and the fake API server on CPU 0, the
# operator on CPU 1. PIN=0: both share all cores.
#
# Usage: bench/operator/run.sh [--workspaces N] [--users U] [--baseline REV] [--modes "shared per-user"]
#                              [--timeout S] [--quiet S]
#        (env: PIN=1; CARGO_TARGET_DIR is honoured)
# Report: printed and kept in bench/operator/results/<UTC timestamp>.txt with the JSON of each run
# (git-ignored).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORKSPACES=10000
USERS=1000
BASELINE=46df150
MODES="shared per-user"
TIMEOUT=300
QUIET=3
while [ $# -gt 0 ]; do
  case $1 in
    --workspaces) WORKSPACES=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --quiet) QUIET=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PIN=${PIN:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log() { printf '==> %s\n' "$*" >&2; }

BENCH_PIN=(); OPERATOR_CPUS=()
if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  BENCH_PIN=(taskset -c 0); OPERATOR_CPUS=(--cpus 1)
  LAYOUT="pinned (taskset): harness and fake API server on CPU 0, the operator on CPU 1"
else
  LAYOUT="unpinned: harness, fake API server and operator share all $(nproc) cores"
fi

# --- binaries ----------------------------------------------------------------------------------
REV=$(git -C "$ROOT" rev-parse --short "$BASELINE")
BASE_BIN="$HERE/.baseline/$REV/atelier"
if [ ! -x "$BASE_BIN" ]; then
  TMP=$(mktemp -d)
  log "building the baseline operator at $REV (git worktree in $TMP)"
  git -C "$ROOT" worktree add --detach "$TMP/src" "$REV" >/dev/null
  (cd "$TMP/src" && cargo build --release --quiet --bin atelier)
  mkdir -p "$(dirname "$BASE_BIN")"
  cp "$CARGO_TARGET_DIR/release/atelier" "$BASE_BIN"
  git -C "$ROOT" worktree remove --force "$TMP/src"
  rm -rf "$TMP"
fi
HEAD_REV=$(git -C "$ROOT" rev-parse --short HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo "+changes" || true)
log "building the operator and the harness at $HEAD_REV$DIRTY (release)"
# The binary on its own, as the baseline is built: building it together with the example would
# unify the dev-dependencies' features (kube's `cel`) into it.
(cd "$ROOT" && cargo build --release --quiet --bin atelier)
NEW_BIN="$HERE/.baseline/head/atelier"
mkdir -p "$(dirname "$NEW_BIN")"
cp "$CARGO_TARGET_DIR/release/atelier" "$NEW_BIN"
(cd "$ROOT" && cargo build --release --quiet --example operator-bench)
BENCH="$CARGO_TARGET_DIR/release/examples/operator-bench"

# --- runs --------------------------------------------------------------------------------------
mkdir -p "$HERE/results"
TS=$(date -u +%Y%m%dT%H%M%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
JSONS=()
for mode in $MODES; do
  for which in baseline new; do
    bin=$BASE_BIN; [ "$which" = new ] && bin=$NEW_BIN
    out="$HERE/results/$TS-$which-$mode.json"
    log "$which ($([ "$which" = new ] && echo "$HEAD_REV$DIRTY" || echo "$REV")), $mode: $WORKSPACES Workspaces, $USERS users"
    "${BENCH_PIN[@]}" "$BENCH" --workspaces "$WORKSPACES" --users "$USERS" --namespace-mode "$mode" \
      --operator "$bin" --timeout "$TIMEOUT" --quiet "$QUIET" "${OPERATOR_CPUS[@]}" \
      --work-dir "$HERE/results/$TS-$which-$mode" --json >"$out"
    JSONS+=("$out")
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ------------------------------------------------------------------------------------
REPORT="$HERE/results/$TS.txt"
python3 - "$REV" "$HEAD_REV$DIRTY" "$LAYOUT" "$LOAD_BEFORE" "$LOAD_AFTER" "${JSONS[@]}" >"$REPORT" <<'EOF'
import json, sys
rev, head, layout, load_before, load_after, *files = sys.argv[1:]
runs = {}
for f in files:
    r = json.load(open(f))
    which = "new" if "-new-" in f else "baseline"
    runs[(r["mode"], which)] = r
print(f"operator bench: baseline {rev} vs new {head}; {layout}; "
      f"load average {load_before} before, {load_after} after")
print("requests: without watches; req/rec and wr/rec: per reconcile; '+': the phase timed out "
      "(figures up to then; the later phases are not run)")
def cell(p, key, n):
    rec = p["reconciles"]
    if key == "time":
        return f"{p['seconds']:.1f}" + ("" if p["completed"] else "+")
    if key == "done":
        return f"{p['done']}/{n}"
    if key == "rec/s":
        return f"{n / p['seconds']:.0f}" if p["completed"] and p["name"] != "unchanged" and p["seconds"] > 0 else "-"
    if key == "req/rec":
        return f"{p['non_watch_requests'] / rec:.2f}" if rec else "-"
    if key == "wr/rec":
        return f"{p['writes'] / rec:.2f}" if rec else "-"
    if key == "listed":
        return str(sum(p["listed_objects"].values()))
    return str(p[key])
def ratio(a, b):
    try:
        a, b = float(a.rstrip("+")), float(b.rstrip("+"))
        return f"{b / a:.2f}" if a else "-"
    except ValueError:
        return "-"
keys = ["time", "done", "reconciles", "rec/s", "non_watch_requests", "req/rec", "wr/rec", "listed", "cpu_seconds"]
for mode in ("shared", "per-user"):
    if (mode, "baseline") not in runs or (mode, "new") not in runs:
        continue
    b, n = runs[(mode, "baseline")], runs[(mode, "new")]
    N = b["workspaces"]
    print()
    print(f"{mode} namespaces, {N} Workspaces, {b['users']} users")
    print(f"{'phase':<14} {'figure':<10} {'baseline':>12} {'new':>12} {'new/base':>9}")
    for name in ("cold", "unchanged", "status change"):
        pb = next((p for p in b["phases"] if p["name"] == name), None)
        pn = next((p for p in n["phases"] if p["name"] == name), None)
        for k in keys:
            def val(p):
                if p is None:
                    return "not run"
                return cell(p, k, N) if k != "cpu_seconds" else f"{p[k]:.1f}"
            vb, vn = val(pb), val(pn)
            label = {"non_watch_requests": "requests", "cpu_seconds": "CPU s"}.get(k, k)
            print(f"{name:<14} {label:<10} {vb:>12} {vn:>12} {ratio(vb, vn) if k not in ('done',) else '':>9}")
    rb, rn = b["peak_rss_kib"] / 1024, n["peak_rss_kib"] / 1024
    print(f"{'run':<14} {'RSS MiB':<10} {rb:>12.1f} {rn:>12.1f} {rn / rb if rb else 0:>9.2f}")
    print(f"{'run':<14} {'CPU s':<10} {b['cpu_seconds']:>12.1f} {n['cpu_seconds']:>12.1f} "
          f"{n['cpu_seconds'] / b['cpu_seconds'] if b['cpu_seconds'] else 0:>9.2f}")
    for which, r in (("baseline", b), ("new", n)):
        for p in r["phases"]:
            by = ", ".join(f"{k} {v}" for k, v in p["by_verb_resource"].items() if not k.startswith("watch "))
            print(f"  {which} {p['name']}: {by}")
EOF
cat "$REPORT"
log "report: $REPORT"
