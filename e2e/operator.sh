#!/usr/bin/env bash
# End-to-end check of the Atelier operator on a real cluster (kind, k3d, or a centre's own).
#
#   KUBECONFIG=~/.kube/config e2e/operator.sh            # run against the current context
#   e2e/operator.sh --dry-run                            # no cluster: check tools and print the plan
#   KUBECONFIG=... e2e/operator.sh --scale 2000          # scale run (below)
#   e2e/operator.sh --dry-run --scale 2000               # no cluster: print the scale run's plan
#
# It installs the CRDs, runs `atelier operator` locally against the cluster, applies a pool, a
# profile and three Workspaces in a temporary namespace, and checks: the pod, Service (headless),
# PVC, Secret and NetworkPolicy appear with owner references; the GPU workspace is refused with a
# reason; a pod the API server refuses (missing PriorityClass) shows in the Workspace's status;
# stopping removes the pod and keeps the home volume; deletion runs the finalizer. It cleans up
# after itself (namespace, e2e-* cluster objects) and prints a summary. The CRDs stay installed.
#
# --scale N: runs the operator (release build) locally, applies N Workspaces at once (N users, one
# Workspace each, profile e2e-minimal on pool e2e-interactive: more pods than the cluster can
# place, so the scheduler keeps the rest Pending) and prints what bench/operator prints: the time
# until every Workspace has a status and reconciles/s, the peak RSS of the local operator
# process, and API requests per reconcile from the operator's own counter
# (atelier_operator_api_requests_total, without watches); then touches every Workspace with an
# annotation the operator ignores and prints the requests per reconcile of that. It deletes the
# Workspaces (the operator removes its finalizers), then the namespace and the e2e-* objects.
# Env: E2E_SCALE_TIMEOUT (600s), E2E_SCALE_PARALLEL (8 kubectl at once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dry_run=0
scale=0
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --scale) scale=${2:?--scale needs a number}; shift 2 ;;
    *) echo "usage: $0 [--dry-run] [--scale N]" >&2; exit 2 ;;
  esac
done
case $scale in ''|*[!0-9]*) echo "--scale needs a number, got $scale" >&2; exit 2 ;; esac

ns="atelier-e2e-$(date +%s)-$$"
timeout="${E2E_TIMEOUT:-180s}"
results=()
pass() { results+=("PASS  $*"); echo "PASS  $*"; }
fail() { results+=("FAIL  $*"); echo "FAIL  $*" >&2; summary; exit 1; }
summary() {
  echo; echo "== e2e summary (namespace $ns) =="
  printf '%s\n' "${results[@]}"
}

plan() {
  cat <<PLAN
plan:
  1. kubectl apply -f $root/crds/ and wait for the CRDs to be Established
  2. create namespace $ns
  3. run: atelier operator --hub-namespace $ns --hub-api-url http://atelier-hub.$ns.svc:8081/hub/api
  4. kubectl apply -f $here/manifests/cluster.yaml; kubectl -n $ns apply -f $here/manifests/workspaces.yaml
  5. wait: pod ws-alice exists with atelier.dev/user=alice; Service, PVC home-alice, Secret, NetworkPolicy owned
  6. wait: bob-gpu has Ready=False reason=NoEligiblePool and no pod; Service ws-alice is headless;
     carol (pool naming a missing PriorityClass) has Ready=False reason=Forbidden, the API
     server's message, phase Pending and a Warning Event
  7. patch alice desiredState=stopped: pod gone, PVC kept, phase Stopped
  8. delete alice: finalizer runs, Workspace gone, PVC kept (profile policy keep)
  9. clean up: stop the operator, delete $ns and the e2e-* cluster objects
PLAN
}

# --- scale mode ----------------------------------------------------------------------------------
scale_plan() {
  cat <<PLAN
plan (scale $scale):
  1. kubectl apply -f $root/crds/ and wait for the CRDs to be Established
  2. create namespace $ns; kubectl apply -f $here/manifests/cluster.yaml (pool e2e-interactive, profile e2e-minimal)
  3. cargo build --release --bin atelier; run: atelier operator --metrics-addr 127.0.0.1:<free port> --hub-namespace $ns
  4. write $scale Workspaces scale-<i> (user s<i>, profile e2e-minimal) and create them at once
     (kubectl create, ${E2E_SCALE_PARALLEL:-8} in parallel, 100 per request file)
  5. poll until every Workspace has a status.phase (timeout ${E2E_SCALE_TIMEOUT:-600s}): time, reconciles/s
     (from atelier_workspace_reconciliations_total), API requests per reconcile (from
     atelier_operator_api_requests_total, without watches), peak RSS (VmHWM of the local operator)
  6. annotate every Workspace (bench.atelier.dev/touched, ignored by the operator); once the operator is
     quiet for 10 s (at most 120 s): reconciles and requests per reconcile of the no-op change
  7. clean up: delete the Workspaces while the operator runs (finalizers), stop the operator, delete
     $ns and the e2e-* cluster objects
PLAN
}

scale_manifest() { # scale_manifest FIRST LAST -> Workspaces scale-FIRST .. scale-LAST
  local i
  for i in $(seq "$1" "$2"); do
    cat <<WS
---
apiVersion: atelier.dev/v1alpha1
kind: Workspace
metadata:
  name: scale-$i
  annotations:
    atelier.dev/groups: "e2e"
spec:
  user: s$i
  profile: e2e-minimal
WS
  done
}

metric_sum() { # metric_sum PORT PREFIX [EXCLUDE] -> the sum of the samples of PREFIX
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v p="$2" -v x="${3:-}" \
    'index($0, p) == 1 && (x == "" || index($0, x) == 0) { s += $NF } END { printf "%d\n", s }'
}

run_scale() {
  if [ "$dry_run" = 1 ]; then
    bash -n "$0" && pass "script syntax"
    for f in "$here"/manifests/cluster.yaml "$root"/crds/*.yaml; do
      [ -s "$f" ] || fail "missing manifest $f"
    done
    [ "$(scale_manifest 0 $((scale - 1)) | grep -c '^kind: Workspace')" = "$scale" ] \
      && pass "$scale Workspaces generated" || fail "Workspace manifest"
    scale_plan
    summary
    exit 0
  fi
  command -v kubectl >/dev/null || fail "kubectl not found"
  command -v curl >/dev/null || fail "curl not found"
  kubectl version >/dev/null 2>&1 || fail "no reachable cluster (KUBECONFIG=${KUBECONFIG:-unset})"
  scale_plan
  local timeout_s=${E2E_SCALE_TIMEOUT:-600s} parallel=${E2E_SCALE_PARALLEL:-8}
  timeout_s=${timeout_s%s}
  (cd "$root" && cargo build --quiet --release --bin atelier)
  local atelier="${CARGO_TARGET_DIR:-$root/target}/release/atelier"
  local work; work=$(mktemp -d)
  log="$work/operator.log"
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  operator_pid=""
  scale_cleanup() {
    if [ -n "$operator_pid" ] && kill -0 "$operator_pid" 2>/dev/null; then
      # The operator removes its finalizers; give it the time to.
      kubectl -n "$ns" delete workspaces --all --wait=true --timeout=300s >/dev/null 2>&1 || true
      kill "$operator_pid" 2>/dev/null || true
    fi
    # Whatever is left (operator gone): drop the finalizers so the namespace can go.
    kubectl -n "$ns" get workspaces -o name 2>/dev/null | while read -r w; do
      kubectl -n "$ns" patch "$w" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
    done
    kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
    kubectl delete -f "$here/manifests/cluster.yaml" --ignore-not-found >/dev/null 2>&1 || true
    echo "operator log: $log"
  }
  trap scale_cleanup EXIT

  kubectl apply -f "$root/crds/" >/dev/null
  kubectl wait --for=condition=Established --timeout=60s \
    crd/workspaces.atelier.dev crd/workspaceprofiles.atelier.dev crd/nodepools.atelier.dev >/dev/null
  pass "CRDs established"
  kubectl create namespace "$ns" >/dev/null
  kubectl apply -f "$here/manifests/cluster.yaml" >/dev/null
  "$atelier" operator --metrics-addr "127.0.0.1:$port" --hub-namespace "$ns" \
    --hub-api-url "http://atelier-hub.$ns.svc:8081/hub/api" >"$log" 2>&1 &
  operator_pid=$!
  local i
  for i in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  pass "operator started (pid $operator_pid, metrics on 127.0.0.1:$port)"
  sleep 5 # the informers' first LISTs
  local rec0 req0
  rec0=$(metric_sum "$port" atelier_workspace_reconciliations_total)
  req0=$(metric_sum "$port" atelier_operator_api_requests_total 'verb="watch"')

  mkdir -p "$work/ws"
  for ((i = 0; i < scale; i += 100)); do
    scale_manifest "$i" $((i + 99 < scale - 1 ? i + 99 : scale - 1)) >"$work/ws/$i.yaml"
  done
  local start=$SECONDS
  ls "$work"/ws/*.yaml | xargs -P "$parallel" -I{} kubectl -n "$ns" create -f {} >/dev/null
  local applied=$((SECONDS - start))
  pass "$scale Workspaces created in ${applied}s"
  local with_status=0
  while :; do
    with_status=$(kubectl -n "$ns" get workspaces -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c . || true)
    [ "$with_status" -ge "$scale" ] && break
    [ $((SECONDS - start)) -lt "$timeout_s" ] || break
    sleep 2
  done
  local took=$((SECONDS - start))
  local rec1 req1 rss
  rec1=$(metric_sum "$port" atelier_workspace_reconciliations_total)
  req1=$(metric_sum "$port" atelier_operator_api_requests_total 'verb="watch"')
  [ "$with_status" -ge "$scale" ] && pass "every Workspace has a status after ${took}s" \
    || results+=("FAIL  only $with_status of $scale Workspaces have a status after ${took}s")

  kubectl -n "$ns" annotate workspaces --all bench.atelier.dev/touched=1 --overwrite >/dev/null
  local last="" now quiet_since=$SECONDS touch_start=$SECONDS
  while [ $((SECONDS - quiet_since)) -lt 10 ] && [ $((SECONDS - touch_start)) -lt 120 ]; do
    now="$(metric_sum "$port" atelier_workspace_reconciliations_total) $(metric_sum "$port" atelier_operator_api_requests_total 'verb="watch"')"
    [ "$now" != "$last" ] && { last=$now; quiet_since=$SECONDS; }
    sleep 1
  done
  local rec2 req2
  rec2=$(metric_sum "$port" atelier_workspace_reconciliations_total)
  req2=$(metric_sum "$port" atelier_operator_api_requests_total 'verb="watch"')
  rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$operator_pid/status")

  echo
  echo "== operator scale: $scale Workspaces =="
  awk -v n="$scale" -v s="$with_status" -v t="$took" -v a="$applied" -v r="$((rec1 - rec0))" \
      -v q="$((req1 - req0))" -v r2="$((rec2 - rec1))" -v q2="$((req2 - req1))" -v rss="$rss" 'BEGIN {
    printf "cold: %d/%d Workspaces with a status after %d s (created in %d s): %.1f reconciles/s of Workspaces\n", s, n, t, a, (t ? s / t : 0)
    printf "      %d reconciles, %d API requests (without watches): %.2f per reconcile\n", r, q, (r ? q / r : 0)
    printf "unchanged (annotation): %d reconciles, %d API requests: %s per reconcile\n", r2, q2, (r2 ? sprintf("%.2f", q2 / r2) : "-")
    printf "peak RSS of the operator: %.1f MiB\n", rss / 1024
  }'
  summary
}

if [ "$scale" -gt 0 ]; then
  run_scale
  exit 0
fi

if [ "$dry_run" = 1 ]; then
  bash -n "$0" && pass "script syntax"
  for f in "$here"/manifests/*.yaml "$root"/crds/*.yaml; do
    [ -s "$f" ] || fail "missing manifest $f"
  done
  pass "manifests present ($(ls "$here"/manifests/*.yaml "$root"/crds/*.yaml | wc -l) files)"
  command -v kubectl >/dev/null && pass "kubectl found: $(kubectl version --client 2>/dev/null | head -n1)" \
    || echo "note: kubectl not found (needed for a real run)"
  plan
  summary
  exit 0
fi

command -v kubectl >/dev/null || fail "kubectl not found"
kubectl version >/dev/null 2>&1 || fail "no reachable cluster (KUBECONFIG=${KUBECONFIG:-unset})"
plan

(cd "$root" && cargo build --quiet --bin atelier)
atelier="$root/target/debug/atelier"
log="$(mktemp -d)/operator.log"
operator_pid=""
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  kubectl delete -f "$here/manifests/cluster.yaml" --ignore-not-found >/dev/null 2>&1 || true
  echo "operator log: $log"
}
trap cleanup EXIT

kubectl apply -f "$root/crds/" >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/workspaces.atelier.dev crd/workspaceprofiles.atelier.dev crd/nodepools.atelier.dev \
  crd/datasources.atelier.dev crd/batchjobs.atelier.dev >/dev/null
pass "CRDs established"

kubectl create namespace "$ns" >/dev/null
"$atelier" operator --hub-namespace "$ns" \
  --hub-api-url "http://atelier-hub.$ns.svc:8081/hub/api" >"$log" 2>&1 &
operator_pid=$!
pass "operator started (pid $operator_pid)"

kubectl apply -f "$here/manifests/cluster.yaml" >/dev/null
kubectl -n "$ns" apply -f "$here/manifests/workspaces.yaml" >/dev/null

wait_for() { # description, command...
  local what=$1; shift
  local deadline=$((SECONDS + ${timeout%s}))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what (timed out after $timeout)"
    sleep 2
  done
  pass "$what"
}

wait_for "pod ws-alice created" kubectl -n "$ns" get pod ws-alice
[ "$(kubectl -n "$ns" get pod ws-alice -o jsonpath='{.metadata.labels.atelier\.dev/user}')" = alice ] \
  && pass "pod labelled atelier.dev/user=alice" || fail "pod label atelier.dev/user"
for obj in service/ws-alice persistentvolumeclaim/home-alice secret/ws-alice-token networkpolicy/ws-alice; do
  wait_for "$obj exists" kubectl -n "$ns" get "$obj"
done
[ "$(kubectl -n "$ns" get service ws-alice -o jsonpath='{.metadata.ownerReferences[0].kind}')" = Workspace ] \
  && pass "service owned by the Workspace" || fail "service owner reference"
wait_for "alice phase Starting or Running" bash -c \
  "kubectl -n $ns get ws alice -o jsonpath='{.status.phase}' | grep -Eq 'Starting|Running'"

wait_for "bob-gpu refused with NoEligiblePool" bash -c \
  "kubectl -n $ns get ws bob-gpu -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}' | grep -q NoEligiblePool"
kubectl -n "$ns" get pod ws-bob-gpu >/dev/null 2>&1 && fail "bob-gpu must have no pod" || pass "bob-gpu has no pod"
[ "$(kubectl -n "$ns" get service ws-alice -o jsonpath='{.spec.clusterIP}')" = None ] \
  && pass "service ws-alice is headless" || fail "service ws-alice must be headless (clusterIP: None)"

wait_for "carol refused by the API server: Ready=False reason=Forbidden" bash -c \
  "kubectl -n $ns get ws carol -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}' | grep -q Forbidden"
kubectl -n "$ns" get ws carol -o jsonpath='{.status.message}' | grep -q "PriorityClass" \
  && pass "carol's status carries the API server's message" || fail "carol's status message names the PriorityClass"
[ "$(kubectl -n "$ns" get ws carol -o jsonpath='{.status.phase}')" = Pending ] \
  && pass "carol is Pending" || fail "carol must be Pending"
kubectl -n "$ns" get events.events.k8s.io -o jsonpath='{range .items[*]}{.regarding.name} {.type} {.reason}{"\n"}{end}' \
  | grep -q "^carol Warning Forbidden" && pass "a Warning Event about carol" || fail "a Warning Event about carol"

kubectl -n "$ns" patch ws alice --type merge -p '{"spec":{"desiredState":"stopped"}}' >/dev/null
wait_for "alice pod removed on stop" bash -c "! kubectl -n $ns get pod ws-alice"
wait_for "alice phase Stopped" bash -c \
  "kubectl -n $ns get ws alice -o jsonpath='{.status.phase}' | grep -q Stopped"
kubectl -n "$ns" get pvc home-alice >/dev/null && pass "home volume kept on stop" || fail "home volume kept on stop"

kubectl -n "$ns" delete ws alice --wait=true --timeout="$timeout" >/dev/null
pass "alice deleted (finalizer completed)"
kubectl -n "$ns" get pvc home-alice >/dev/null && pass "home volume kept on delete (policy keep)" \
  || fail "home volume kept on delete"

summary
