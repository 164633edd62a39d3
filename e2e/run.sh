#!/usr/bin/env bash
# End-to-end install of Atelier with its Helm chart on a real cluster (kind, k3d, or a centre's).
#
#   KUBECONFIG=~/.kube/config e2e/run.sh        # install, start a workspace, reach it, clean up
#   e2e/run.sh --dry-run                         # no cluster: render and validate what it applies
#
# It installs charts/atelier (from this repository) with e2e/values-e2e.yaml into a temporary
# namespace, applies a Workspace for user e2e-alice (the pool and profile come from the values),
# waits for it to be Running, reaches its server through the proxy (kubectl port-forward to the
# proxy Service, then GET /user/e2e-alice/api/status with a token made through the hub API),
# stops it, uninstalls and prints a summary. The CRDs stay installed (Helm never deletes them).
#
# Environment:
#   E2E_IMAGE            the Atelier image (default: atelier:e2e, built from images/atelier and
#                        loaded into kind/k3d when the current context is one)
#   E2E_WORKSPACE_IMAGE  the workspace image (default: the profile's in values-e2e.yaml)
#   E2E_TIMEOUT          wait per step (default 300s)
#   ATELIER_PEERS_VENV   venv with helm-python-sdk and kubernetes-validate (dry run; default .peers/venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
chart="$root/charts/atelier"
values="$here/values-e2e.yaml"
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1

ns="atelier-e2e-$(date +%s)-$$"
release=atelier-e2e
user=e2e-alice
workspace=e2e-alice
timeout="${E2E_TIMEOUT:-300s}"
image="${E2E_IMAGE:-atelier:e2e}"
venv="${ATELIER_PEERS_VENV:-$root/.peers/venv}"
work=$(mktemp -d)
pf_pid=""
results=()
pass() { results+=("PASS  $*"); echo "PASS  $*"; }
fail() { results+=("FAIL  $*"); echo "FAIL  $*" >&2; summary; exit 1; }
summary() {
  echo; echo "== e2e summary (release $release, namespace $ns) =="
  printf '%s\n' "${results[@]}"
}

workspace_manifest() {
  cat <<YAML
apiVersion: atelier.dev/v1alpha1
kind: Workspace
metadata:
  name: $workspace
  namespace: $1
spec:
  user: $user
  profile: e2e-jupyter
  nodePool: e2e-interactive
YAML
}

plan() {
  cat <<PLAN
plan:
  1. create namespace $ns and the Secret atelier-e2e-admin (the e2e service's hub token)
  2. helm install $release $chart -n $ns -f $values --set image.repository/tag=$image --wait
  3. kubectl apply a Workspace $workspace (user $user, profile e2e-jupyter, pool e2e-interactive)
  4. wait: the Workspace is Running; the hub adopts it (GET /hub/api/users/$user: server ready)
  5. POST /hub/api/users/$user/tokens (e2e service token) -> a token for $user
  6. kubectl port-forward svc/$release-proxy; GET /user/$user/api/status with the token -> 200
  7. patch desiredState=stopped: the pod goes, phase Stopped
  8. clean up: delete the Workspace, helm uninstall, delete $ns
PLAN
}

if [ "$dry_run" = 1 ]; then
  trap 'rm -rf "$work"' EXIT
  bash -n "$0" && pass "script syntax"
  [ -s "$values" ] || fail "missing $values"
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null \
    || fail "no helm-python-sdk/kubernetes-validate in $venv (run .ci/test.sh to provision the peers)"
  # The chart as run.sh installs it, each object validated (check_chart.py --render).
  "$venv/bin/python" "$chart/tests/check_chart.py" --render "$values" --name "$release" \
    --namespace "$ns" --out "$work/rendered.yaml" >"$work/render.log" 2>&1 \
    || { cat "$work/render.log" >&2; fail "chart renders and validates with $(basename "$values")"; }
  pass "chart renders and validates with $(basename "$values") ($(grep -c '^kind:' "$work/rendered.yaml") objects)"
  # The Workspace it applies, against the CRD, and the objects the steps name exist.
  workspace_manifest "$ns" >"$work/workspace.yaml"
  PYTHONPATH="$chart/tests" "$venv/bin/python" - "$work/rendered.yaml" "$work/workspace.yaml" "$release" <<'PY' \
    || fail "the Workspace and the rendered objects the script uses"
import sys, yaml, check_chart
rendered = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ws = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
check_chart.validate(ws, "e2e Workspace", expect_builtin=False)
release = sys.argv[3]
names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
for want in [("Service", f"{release}-proxy"), ("Service", f"{release}-hub"), ("NodePool", "e2e-interactive"),
             ("WorkspaceProfile", "e2e-jupyter"), ("Deployment", f"{release}-operator"),
             ("PriorityClass", "atelier-e2e-interactive")]:
    check_chart.check(want in names, f"rendered {want[0]}/{want[1]}")
hub = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{release}-hub")
env = {e["name"] for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
check_chart.check("ATELIER_SERVICE_E2E_TOKEN" in env, "the hub reads the e2e service token")
sys.exit(1 if check_chart.failures else 0)
PY
  pass "the Workspace matches its CRD; the Services, pool, profile and e2e token it uses are rendered"
  for tool in kubectl helm curl; do
    command -v "$tool" >/dev/null && pass "$tool found" || echo "note: $tool not found (needed for a real run)"
  done
  plan
  summary
  exit 0
fi

for tool in kubectl helm curl openssl; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
kubectl version >/dev/null 2>&1 || fail "no reachable cluster (KUBECONFIG=${KUBECONFIG:-unset})"
plan

cleanup() {
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
  kubectl -n "$ns" delete workspace "$workspace" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
  helm uninstall "$release" -n "$ns" --wait >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the image ------------------------------------------------------------------------------
if [ -z "${E2E_IMAGE:-}" ]; then
  command -v docker >/dev/null || fail "docker not found (or set E2E_IMAGE to an image the cluster can pull)"
  docker build -q -f "$root/images/atelier/Dockerfile" -t "$image" "$root" >/dev/null || fail "docker build $image"
  context=$(kubectl config current-context)
  case "$context" in
    kind-*) kind load docker-image "$image" --name "${context#kind-}" >/dev/null || fail "kind load $image" ;;
    k3d-*) k3d image import "$image" -c "${context#k3d-}" >/dev/null || fail "k3d image import $image" ;;
    *) echo "note: context $context is neither kind nor k3d; the cluster must be able to pull $image" ;;
  esac
  pass "built $image"
fi
repo="${image%:*}"
tag="${image##*:}"

# --- install --------------------------------------------------------------------------------
kubectl create namespace "$ns" >/dev/null
admin_token=$(openssl rand -hex 32)
kubectl -n "$ns" create secret generic atelier-e2e-admin --from-literal=token="$admin_token" >/dev/null
set_args=(--set "image.repository=$repo" --set "image.tag=$tag")
[ -n "${E2E_WORKSPACE_IMAGE:-}" ] && set_args+=(--set "workspaceProfiles.e2e-jupyter.image=$E2E_WORKSPACE_IMAGE")
helm install "$release" "$chart" -n "$ns" -f "$values" "${set_args[@]}" --wait --timeout "$timeout" >/dev/null \
  || { kubectl -n "$ns" get pods -o wide >&2; fail "helm install $release"; }
pass "helm install $release: hub, proxy and operator ready"

# --- a workspace ----------------------------------------------------------------------------
workspace_manifest "$ns" | kubectl apply -f - >/dev/null || fail "apply Workspace $workspace"
kubectl -n "$ns" wait "workspace/$workspace" --for=jsonpath='{.status.phase}'=Running --timeout="$timeout" >/dev/null \
  || { kubectl -n "$ns" describe "workspace/$workspace" >&2; kubectl -n "$ns" get pods >&2; fail "Workspace $workspace Running"; }
pass "Workspace $workspace Running (pod $(kubectl -n "$ns" get "workspace/$workspace" -o jsonpath='{.status.podName}'))"
pod=$(kubectl -n "$ns" get "workspace/$workspace" -o jsonpath='{.status.podName}')
[ "$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.priorityClassName}')" = atelier-e2e-interactive ] \
  && pass "the pod runs with the chart's PriorityClass atelier-e2e-interactive" \
  || fail "the pod's priorityClassName is the chart's atelier-e2e-interactive"

# --- through the proxy ----------------------------------------------------------------------
port=$((18000 + RANDOM % 1000))
kubectl -n "$ns" port-forward "svc/$release-proxy" "$port:80" >"$work/port-forward.log" 2>&1 &
pf_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 30); do curl -fsS "$base/_atelier/proxy/health" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$base/_atelier/proxy/health" >/dev/null || fail "proxy reachable through port-forward"
pass "proxy reachable ($base)"

auth=(-H "Authorization: token $admin_token")
ready=0
for _ in $(seq 1 60); do
  if curl -fsS "${auth[@]}" "$base/hub/api/users/$user" 2>/dev/null | tr -d ' \n' | grep -q '"ready":true'; then
    ready=1; break
  fi
  sleep 2
done
[ "$ready" = 1 ] || fail "the hub adopts Workspace $workspace as $user's ready server"
pass "the hub lists $user's server as ready"

token=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' \
  -d "{\"note\": \"e2e\", \"expires_in\": 600, \"scopes\": [\"access:servers!user=$user\"]}" \
  "$base/hub/api/users/$user/tokens" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
[ -n "$token" ] || fail "a token for $user through the hub API"
pass "token for $user created through the hub API"

status=$(curl -sS -o "$work/status.json" -w '%{http_code}' -H "Authorization: token $token" "$base/user/$user/api/status")
[ "$status" = 200 ] || { cat "$work/status.json" >&2; fail "GET /user/$user/api/status through the proxy (HTTP $status)"; }
pass "GET /user/$user/api/status through the proxy: 200 $(head -c 120 "$work/status.json")"

# --- stop -----------------------------------------------------------------------------------
kubectl -n "$ns" patch "workspace/$workspace" --type merge -p '{"spec":{"desiredState":"stopped"}}' >/dev/null
kubectl -n "$ns" wait "workspace/$workspace" --for=jsonpath='{.status.phase}'=Stopped --timeout="$timeout" >/dev/null \
  || fail "Workspace $workspace Stopped"
pass "Workspace $workspace stopped"

kill "$pf_pid" 2>/dev/null || true
pf_pid=""
kubectl -n "$ns" delete workspace "$workspace" --wait=true --timeout=120s >/dev/null || fail "delete Workspace $workspace"
helm uninstall "$release" -n "$ns" --wait >/dev/null || fail "helm uninstall $release"
pass "uninstalled $release"
summary
