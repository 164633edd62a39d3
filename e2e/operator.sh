#!/usr/bin/env bash
# End-to-end check of the Atelier operator on a real cluster (kind, k3d, or a centre's own).
#
#   KUBECONFIG=~/.kube/config e2e/operator.sh            # run against the current context
#   e2e/operator.sh --dry-run                            # no cluster: check tools and print the plan
#
# It installs the CRDs, runs `atelier operator` locally against the cluster, applies a pool, a
# profile and three Workspaces in a temporary namespace, and checks: the pod, Service (headless),
# PVC, Secret and NetworkPolicy appear with owner references; the GPU workspace is refused with a
# reason; a pod the API server refuses (missing PriorityClass) shows in the Workspace's status;
# stopping removes the pod and keeps the home volume; deletion runs the finalizer. It cleans up
# after itself (namespace, e2e-* cluster objects) and prints a summary. The CRDs stay installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1

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
