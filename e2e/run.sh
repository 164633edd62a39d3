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
# The DataSource story (skipped with E2E_DATA=0): installs the csi-s3 driver (the chart of
# yandex-cloud/k8s-csi-s3, pinned, with its CSIDriver ru.yandex.s3.csi) unless the cluster has it,
# runs SeaweedFS in the namespace (e2e/manifests/data-s3.yaml), creates a bucket with a file in it
# (curl --aws-sigv4 through a port-forward) and a credentials Secret, applies two DataSources
# (e2e/manifests/data-sources.yaml) and two Workspaces (e2e/manifests/data-workspaces.yaml), and
# checks: e2e-bob is Running with the bucket mounted at /data/e2e (a PersistentVolumeClaim of its
# own) and AWS_* environment from secretKeyRef, the key values nowhere in the pod spec nor in the
# operator's log, the file readable inside the pod (kubectl exec cat); e2e-carol, whose source
# names a missing Secret, is Ready=False with reason DataCredentialsNotFound and has no pod.
# Needs privileged pods and /dev/fuse on the nodes (kind and k3d have both).
#
# The BatchJob story (skipped with E2E_BATCH=0), for user e2e-erin who never started a workspace,
# on the chart's batch pool e2e-batch (e2e/manifests/batch-jobs.yaml, one job at a time): e2e-sum
# is Succeeded with exit code 0 and `kubectl logs` of its pod shows its output, the operator made
# her home claim home-e2e-erin (her default workspace's labels, no owner); e2e-exit3 is Failed
# with exit code 3; e2e-sleep, Running, is cancelled (spec.cancel) and shows Cancelled, its Job
# gone. With E2E_KUEUE=1 it then installs Kueue from its release manifest (unless the cluster has
# it), applies a held ClusterQueue, a LocalQueue, the NodePool e2e-queued naming it and a BatchJob
# on it (e2e/manifests/batch-kueue.yaml): Queued (WaitingForAdmission, its Job suspended, Kueue's
# Workload not admitted) while the queue is held, then Succeeded once it is released; all of it
# is deleted after (Kueue too when the script installed it).
#
# Environment:
#   E2E_IMAGE            the Atelier image (default: atelier:e2e, built from images/atelier and
#                        loaded into kind/k3d when the current context is one)
#   E2E_WORKSPACE_IMAGE  the workspace image (default: the profile's in values-e2e.yaml)
#   E2E_TIMEOUT          wait per step (default 300s)
#   E2E_DATA             1 (default): run the DataSource story; 0: skip it
#   E2E_DASK             1 (default): run the Dask story (DaskOperatorMissing, then the
#                        dask-kubernetes operator chart and a cluster); 0: skip it
#   E2E_DASK_OPERATOR_VERSION  its chart version (default 2026.3.0)
#   E2E_DASK_IMAGE       the scheduler's and workers' image (default ghcr.io/dask/dask:2025.5.0-py3.11)
#   E2E_CSI_S3_VERSION   the csi-s3 chart version (default 0.43.2)
#   E2E_S3_IMAGE         the S3 server image (default chrislusf/seaweedfs:3.85)
#   E2E_BATCH            1 (default): run the BatchJob story; 0: skip it
#   E2E_KUEUE            1: the BatchJob story's Kueue part (installs Kueue cluster-wide unless
#                        present); 0 (default): skip it
#   E2E_KUEUE_VERSION    the Kueue release (default v0.15.3)
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
s3_pf_pid=""
data="${E2E_DATA:-1}"
# The csi-s3 chart repository and README install line: yandex-cloud/k8s-csi-s3 `README.md`
# ("helm repo add yandex-s3 https://yandex-cloud.github.io/k8s-csi-s3/charts"); the chart's
# versions: its `charts/` directory (csi-s3-0.43.2.tgz) and `charts/index.yaml`.
csi_s3_repo=https://yandex-cloud.github.io/k8s-csi-s3/charts
csi_s3_version="${E2E_CSI_S3_VERSION:-0.43.2}"
csi_s3_release=atelier-e2e-csi-s3
csi_s3_installed=0
dask="${E2E_DASK:-1}"
# The dask-kubernetes operator's chart: dask/dask-kubernetes `README` and the docs' install line
# ("helm install --repo https://helm.dask.org ... dask-kubernetes-operator"); 2026.3.0 as the
# chart README of Atelier pins it.
dask_operator_repo=https://helm.dask.org
dask_operator_version="${E2E_DASK_OPERATOR_VERSION:-2026.3.0}"
dask_operator_release=atelier-e2e-dask-operator
dask_operator_installed=0
dask_image="${E2E_DASK_IMAGE:-ghcr.io/dask/dask:2025.5.0-py3.11}"
dask_placeholder=e2e-dask.invalid/dask:placeholder
csi_driver_applied=0
s3_image="${E2E_S3_IMAGE:-chrislusf/seaweedfs:3.85}"
batch="${E2E_BATCH:-1}"
batch_user=e2e-erin
kueue="${E2E_KUEUE:-0}"
# Kueue's install line: kubernetes-sigs/kueue site/content/en/docs/installation/_index.md
# ("kubectl apply --server-side -f https://github.com/kubernetes-sigs/kueue/releases/download/
# <version>/manifests.yaml", then "kubectl wait deploy/kueue-controller-manager -nkueue-system
# --for=condition=available"); v0.15.3 is the release its docs name (site/hugo.toml,
# params.version).
kueue_version="${E2E_KUEUE_VERSION:-v0.15.3}"
kueue_manifest="https://github.com/kubernetes-sigs/kueue/releases/download/$kueue_version/manifests.yaml"
kueue_installed=0
kueue_applied=0
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
  [ "$data" = 1 ] && cat <<PLAN
  data (E2E_DATA=1), between 6 and 7:
  d1. csi-s3: unless CSIDriver ru.yandex.s3.csi exists, helm install $csi_s3_release csi-s3
      --repo $csi_s3_repo --version $csi_s3_version -n $ns (no StorageClass, no Secret);
      kubectl apply $here/manifests/data-csidriver.yaml if the chart made no CSIDriver
  d2. Secret e2e-s3-config (s3.json with random keys); kubectl apply $here/manifests/data-s3.yaml
      ($s3_image); port-forward svc/e2e-s3; PUT bucket e2e-data and e2e-data/hello.txt (curl --aws-sigv4)
  d3. Secret e2e-s3-credentials (labelled atelier.dev/credentials=true); DataSources e2e-s3 and
      e2e-s3-no-secret (endpoint http://<ClusterIP of e2e-s3>:8333); Workspaces e2e-bob, e2e-carol
  d4. e2e-bob Running; pod: volume from claim data-..., mount /data/e2e, AWS_ACCESS_KEY_ID and
      AWS_SECRET_ACCESS_KEY from secretKeyRef e2e-s3-credentials, no key value in the pod or the
      operator's log; kubectl exec cat /data/e2e/hello.txt = what was PUT
  d5. e2e-carol Ready=False reason DataCredentialsNotFound, no pod
  d6. delete both Workspaces (their claims and volumes go), the DataSources, csi-s3
PLAN
  [ "$dask" = 1 ] && cat <<PLAN
  dask (E2E_DASK=1), after the data story:
  k1. unless CRD daskclusters.kubernetes.dask.org exists: apply Workspace e2e-dora
      ($here/manifests/dask-workspace.yaml, image $dask_image): Ready=False, DaskOperatorMissing
  k2. helm install $dask_operator_release dask-kubernetes-operator --repo $dask_operator_repo
      --version $dask_operator_version -n $ns --wait (unless the CRD exists)
  k3. e2e-dora: condition Dask reason DaskRunning; DaskCluster and DaskAutoscaler ws-e2e-dora-dask
      (maximum 2), NetworkPolicy ws-e2e-dora-dask
  k4. delete e2e-dora: its DaskCluster goes with it; helm uninstall the dask operator
PLAN
  [ "$batch" = 1 ] && cat <<PLAN
  batch (E2E_BATCH=1), after the Dask story; user $batch_user (no workspace), pool e2e-batch:
  b1. no claim home-$batch_user yet; apply BatchJob e2e-sum ($here/manifests/batch-jobs.yaml)
  b2. e2e-sum Succeeded, exitCode 0, system kubernetes on e2e-batch; kubectl logs of its pod
      prints "e2e batch sum 45"; claim home-$batch_user made by the operator (label
      atelier.dev/workspace=$batch_user, no ownerReferences)
  b3. BatchJob e2e-exit3: Failed, exitCode 3
  b4. BatchJob e2e-sleep Running; patch spec.cancel=true: Cancelled, Job e2e-sleep deleted
  b5. delete the three BatchJobs (their Jobs go); home-$batch_user stays
PLAN
  [ "$batch" = 1 ] && [ "$kueue" = 1 ] && cat <<PLAN
  kueue (E2E_KUEUE=1), after b5:
  q1. unless CRD clusterqueues.kueue.x-k8s.io exists: kubectl apply --server-side -f
      $kueue_manifest; wait deploy/kueue-controller-manager -n kueue-system available
  q2. apply $here/manifests/batch-kueue.yaml: ResourceFlavor, ClusterQueue (stopPolicy Hold),
      LocalQueue atelier-e2e-queue, NodePool e2e-queued, BatchJob e2e-queued-sum
  q3. e2e-queued-sum Queued, reason WaitingForAdmission; Job suspended with label
      kueue.x-k8s.io/queue-name=atelier-e2e-queue; Kueue's Workload not admitted; no pod
  q4. patch the ClusterQueue stopPolicy None: e2e-queued-sum Succeeded, exitCode 0, its log
  q5. delete the BatchJob, the queues, flavor and pool; kubectl delete -f the manifest if installed
PLAN
  return 0
}

dask_workspace() {
  sed -e "s|$dask_placeholder|$dask_image|" "$here/manifests/dask-workspace.yaml"
}

# The story's generated manifests: data_secrets NAMESPACE ACCESS_KEY SECRET_KEY ENDPOINT
data_secrets() {
  cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: e2e-s3-config
  namespace: $1
stringData:
  s3.json: '{"identities": [{"name": "e2e", "credentials": [{"accessKey": "$2", "secretKey": "$3"}], "actions": ["Admin", "Read", "List", "Write"]}]}'
---
apiVersion: v1
kind: Secret
metadata:
  name: e2e-s3-credentials
  namespace: $1
  labels:
    atelier.dev/credentials: "true"
stringData:
  AWS_ACCESS_KEY_ID: $2
  AWS_SECRET_ACCESS_KEY: $3
  accessKeyID: $2
  secretAccessKey: $3
  endpoint: $4
YAML
}

# data_sources ENDPOINT: e2e/manifests/data-sources.yaml with the endpoint set.
data_sources() {
  sed "s|http://e2e-s3.invalid:8333|$1|" "$here/manifests/data-sources.yaml"
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
  if [ "$data" = 1 ]; then
    # The DataSource story's manifests as the script applies them (made-up keys and endpoint).
    data_secrets "$ns" E2EDRYRUNKEY0000 dry-run-secret-0000 http://10.96.0.42:8333 >"$work/data-secrets.yaml"
    data_sources http://10.96.0.42:8333 >"$work/data-sources.yaml"
    PYTHONPATH="$chart/tests" "$venv/bin/python" - "$here/manifests" "$work" "$release" <<'PY' \
      || fail "the DataSource story's manifests"
import sys, yaml, check_chart
from pathlib import Path
manifests, work, release = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
load = lambda p: [d for d in yaml.safe_load_all(p.read_text()) if d]
server, driver, secrets = load(manifests / "data-s3.yaml"), load(manifests / "data-csidriver.yaml"), load(work / "data-secrets.yaml")
sources, workspaces = load(work / "data-sources.yaml"), load(manifests / "data-workspaces.yaml")
check_chart.validate(server + driver + secrets, "e2e data: S3 server, CSIDriver, Secrets")
check_chart.validate(sources + workspaces, "e2e data: DataSources, Workspaces", expect_builtin=False)
check = check_chart.check
check([d["spec"]["s3"]["endpoint"] for d in sources] == ["http://10.96.0.42:8333"] * 2, "the endpoint placeholder is replaced")
check(driver[0]["metadata"]["name"] == "ru.yandex.s3.csi" and driver[0]["spec"]["volumeLifecycleModes"] == ["Persistent"],
      "CSIDriver ru.yandex.s3.csi, Persistent only (as upstream's driver.yaml)")
creds = next(d for d in secrets if d["metadata"]["name"] == "e2e-s3-credentials")
check(creds["metadata"]["labels"] == {"atelier.dev/credentials": "true"}, "the credentials Secret is labelled for the operator")
check(set(creds["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "accessKeyID", "secretAccessKey", "endpoint"},
      "the credentials Secret has the environment's and csi-s3's keys")
by_name = {d["metadata"]["name"]: d for d in sources}
check(by_name["e2e-s3"]["spec"]["s3"]["credentialsSecret"]["name"] == "e2e-s3-credentials", "e2e-s3 names e2e-s3-credentials")
check(by_name["e2e-s3-no-secret"]["spec"]["s3"]["credentialsSecret"]["name"] not in {d["metadata"]["name"] for d in secrets},
      "e2e-s3-no-secret names a Secret the script never creates")
check({d["metadata"]["name"]: d["spec"]["dataSources"] for d in workspaces} == {"e2e-bob": ["e2e-s3"], "e2e-carol": ["e2e-s3-no-secret"]},
      "e2e-bob uses e2e-s3, e2e-carol e2e-s3-no-secret")
service = next(d for d in server if d["kind"] == "Service")
check([p["port"] for p in service["spec"]["ports"]] == [8333], "the S3 Service listens on 8333")
rendered = [d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d]
policy = next((d for d in rendered if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"{release}-operator"), None)
ports = {p["port"] for rule in (policy or {}).get("spec", {}).get("egress", []) for p in rule.get("ports", [])}
check(policy is None or 8333 in ports, "the operator's NetworkPolicy lets its endpoint probe reach the S3 port 8333")
sys.exit(1 if check_chart.failures else 0)
PY
    pass "the DataSource story's manifests: built-in objects valid, DataSources and Workspaces match their CRDs"
  fi
  if [ "$dask" = 1 ]; then
    dask_workspace >"$work/dask-workspace.yaml"
    PYTHONPATH="$chart/tests" "$venv/bin/python" - "$work/dask-workspace.yaml" "$work/rendered.yaml" "$dask_image" <<'PY' \
      || fail "the Dask story's Workspace and profile"
import sys, yaml, check_chart
ws = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rendered = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
check_chart.validate(ws, "e2e Dask Workspace", expect_builtin=False)
check = check_chart.check
check(ws[0]["spec"]["dask"]["image"] == sys.argv[3], "the Dask image placeholder is replaced")
profile = next(d for d in rendered if d["kind"] == "WorkspaceProfile" and d["metadata"]["name"] == "e2e-jupyter")
check(profile["spec"].get("allowImageOverride") is True and profile["spec"].get("dask", {}).get("maxWorkers") == 2,
      "the rendered profile offers Dask (2 workers) and the image override")
sys.exit(1 if check_chart.failures else 0)
PY
    pass "the Dask story's Workspace matches its CRD; the rendered profile offers Dask"
  fi
  if [ "$batch" = 1 ]; then
    PYTHONPATH="$chart/tests" "$venv/bin/python" - "$here/manifests" "$work/rendered.yaml" <<'PY' \
      || fail "the BatchJob story's manifests"
import sys, yaml, check_chart
from pathlib import Path
manifests = Path(sys.argv[1])
load = lambda p: [d for d in yaml.safe_load_all(p.read_text()) if d]
jobs, queued = load(manifests / "batch-jobs.yaml"), load(manifests / "batch-kueue.yaml")
rendered = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
check = check_chart.check
atelier = [d for d in queued if d["apiVersion"].startswith("atelier.dev/")]
check_chart.validate(jobs + atelier, "e2e batch: BatchJobs, NodePool", expect_builtin=False)
check([d["metadata"]["labels"]["e2e.atelier.dev/step"] for d in jobs] == ["sum", "exit3", "cancel"],
      "one step label per BatchJob, in the story's order")
check({d["spec"]["user"] for d in jobs + atelier if d["kind"] == "BatchJob"} == {"e2e-erin"},
      "every BatchJob is e2e-erin's")
pool = next((d for d in rendered if d["kind"] == "NodePool" and d["metadata"]["name"] == "e2e-batch"), None)
check(pool is not None and pool["spec"]["purpose"] == "batch", "the chart renders the batch pool e2e-batch")
check({d["spec"]["nodePool"] for d in jobs} == {"e2e-batch"}, "the plain jobs run on e2e-batch")
kinds = {d["kind"]: d for d in queued}
flavor, cq, lq, np, bj = (kinds.get(k) for k in ("ResourceFlavor", "ClusterQueue", "LocalQueue", "NodePool", "BatchJob"))
check(all(d and d["apiVersion"] == "kueue.x-k8s.io/v1beta1" for d in (flavor, cq, lq)), "Kueue's kinds, v1beta1")
check(cq["spec"].get("stopPolicy") == "Hold" and cq["spec"].get("namespaceSelector") == {},
      "the ClusterQueue is created held, for every namespace")
group = cq["spec"]["resourceGroups"][0]
check(group["coveredResources"] == ["cpu", "memory"] and group["flavors"][0]["name"] == flavor["metadata"]["name"],
      "the ClusterQueue covers cpu and memory with the story's flavor")
check(lq["spec"]["clusterQueue"] == cq["metadata"]["name"], "the LocalQueue feeds the ClusterQueue")
check(np["spec"]["kueue"]["localQueueName"] == lq["metadata"]["name"], "the NodePool names the LocalQueue")
check(bj["spec"]["nodePool"] == np["metadata"]["name"], "the queued BatchJob runs on that pool")
sys.exit(1 if check_chart.failures else 0)
PY
    pass "the BatchJob story's manifests: BatchJobs and NodePool match their CRDs; the Kueue queues chain to the pool"
  fi
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
  [ -n "$s3_pf_pid" ] && kill "$s3_pf_pid" 2>/dev/null || true
  # The operator still runs: its finalizers delete the data claims and volumes.
  kubectl -n "$ns" delete workspace "$workspace" e2e-bob e2e-carol e2e-dora --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
  if [ "$data" = 1 ]; then
    kubectl delete -f "$here/manifests/data-sources.yaml" --ignore-not-found >/dev/null 2>&1 || true
  fi
  helm uninstall "$release" -n "$ns" --wait >/dev/null 2>&1 || true
  [ "$csi_s3_installed" = 1 ] && { helm uninstall "$csi_s3_release" -n "$ns" --wait >/dev/null 2>&1 || true; }
  [ "$dask_operator_installed" = 1 ] && { helm uninstall "$dask_operator_release" -n "$ns" --wait >/dev/null 2>&1 || true; }
  [ "$csi_driver_applied" = 1 ] && { kubectl delete -f "$here/manifests/data-csidriver.yaml" --ignore-not-found >/dev/null 2>&1 || true; }
  if [ "$batch" = 1 ]; then
    kubectl -n "$ns" delete batchjob e2e-sum e2e-exit3 e2e-sleep e2e-queued-sum --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
  fi
  # Kueue's cluster-scoped objects (the namespace's go with it), then Kueue if the script installed it.
  [ "$kueue_applied" = 1 ] && { kubectl -n "$ns" delete -f "$here/manifests/batch-kueue.yaml" --ignore-not-found --timeout=60s >/dev/null 2>&1 || true; }
  [ "$kueue_installed" = 1 ] && { kubectl delete -f "$kueue_manifest" --ignore-not-found --timeout=120s >/dev/null 2>&1 || true; }
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

# --- the DataSource story (E2E_DATA=1) --------------------------------------------------------
# jsonpath of the Ready condition's field $2 of Workspace $1
ready_field() {
  kubectl -n "$ns" get "workspace/$1" -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].$2}" 2>/dev/null
}

data_story() {
  # d1. csi-s3 and its CSIDriver. Values: yandex-cloud/k8s-csi-s3 `deploy/helm/csi-s3/values.yaml`
  # (storageClass.create, secret.create: the story needs neither, its PersistentVolumes are static
  # and carry their Secret references).
  if kubectl get csidriver ru.yandex.s3.csi >/dev/null 2>&1; then
    pass "csi-s3 already on the cluster (CSIDriver ru.yandex.s3.csi): the story uses it"
  else
    helm install "$csi_s3_release" csi-s3 --repo "$csi_s3_repo" --version "$csi_s3_version" -n "$ns" \
      --set storageClass.create=false --set secret.create=false --wait --timeout "$timeout" >/dev/null \
      || { kubectl -n "$ns" get pods -o wide >&2; fail "helm install csi-s3 $csi_s3_version"; }
    csi_s3_installed=1
    if ! kubectl get csidriver ru.yandex.s3.csi >/dev/null 2>&1; then
      kubectl apply -f "$here/manifests/data-csidriver.yaml" >/dev/null || fail "apply CSIDriver ru.yandex.s3.csi"
      csi_driver_applied=1
    fi
    pass "csi-s3 $csi_s3_version installed (node plugin ready)"
  fi
  local modes
  modes=$(kubectl get csidriver ru.yandex.s3.csi -o jsonpath='{.spec.volumeLifecycleModes}')
  case $modes in
    *Persistent*) pass "CSIDriver ru.yandex.s3.csi offers Persistent volumes ($modes)" ;;
    *) fail "CSIDriver ru.yandex.s3.csi offers Persistent volumes (it lists: $modes)" ;;
  esac

  # d2. The S3 server, its bucket and a file in it.
  local key secret ip endpoint
  key="E2E$(openssl rand -hex 8 | tr 'a-f' 'A-F')"
  secret=$(openssl rand -hex 20)
  sed "s|image: chrislusf/seaweedfs:3.85|image: $s3_image|" "$here/manifests/data-s3.yaml" \
    | kubectl -n "$ns" apply -f - >/dev/null || fail "apply the S3 server (data-s3.yaml)"
  ip=$(kubectl -n "$ns" get svc e2e-s3 -o jsonpath='{.spec.clusterIP}')
  case $ip in
    '' | None) fail "the e2e-s3 Service has a ClusterIP" ;;
    *:*) endpoint="http://[$ip]:8333" ;;
    *) endpoint="http://$ip:8333" ;;
  esac
  data_secrets "$ns" "$key" "$secret" "$endpoint" | kubectl apply -f - >/dev/null \
    || fail "create the Secrets e2e-s3-config and e2e-s3-credentials"
  kubectl -n "$ns" rollout status deployment/e2e-s3 --timeout="$timeout" >/dev/null \
    || { kubectl -n "$ns" describe pods -l app.kubernetes.io/name=e2e-s3 >&2; fail "S3 server e2e-s3 ready"; }
  pass "S3 server e2e-s3 ($s3_image) ready at $endpoint"

  local s3_port s3_base content code created=0
  s3_port=$((19000 + RANDOM % 1000))
  kubectl -n "$ns" port-forward svc/e2e-s3 "$s3_port:8333" >"$work/s3-port-forward.log" 2>&1 &
  s3_pf_pid=$!
  s3_base="http://127.0.0.1:$s3_port"
  # Path-style requests signed with the story's keys (curl >= 7.75; the payload left unsigned).
  local sig=(-sS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$key:$secret" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
  for _ in $(seq 1 60); do
    code=$(curl "${sig[@]}" -o /dev/null -w '%{http_code}' -X PUT "$s3_base/e2e-data" 2>/dev/null || true)
    [ "$code" = 200 ] && { created=1; break; }
    sleep 2
  done
  [ "$created" = 1 ] || fail "create bucket e2e-data (last answer: HTTP $code)"
  content="written to e2e-data by e2e/run.sh at $(date -u +%FT%TZ)"
  printf '%s\n' "$content" >"$work/hello.txt"
  code=$(curl "${sig[@]}" -o /dev/null -w '%{http_code}' -T "$work/hello.txt" "$s3_base/e2e-data/hello.txt")
  [ "$code" = 200 ] || fail "PUT e2e-data/hello.txt (HTTP $code)"
  [ "$(curl "${sig[@]}" "$s3_base/e2e-data/hello.txt")" = "$content" ] || fail "GET e2e-data/hello.txt"
  code=$(curl -sS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$key:not-the-secret" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null -w '%{http_code}' "$s3_base/e2e-data/hello.txt")
  [ "$code" = 403 ] || fail "the S3 server refuses a wrong secret key (HTTP $code)"
  pass "bucket e2e-data holds hello.txt; the server refuses a wrong key (403)"
  kill "$s3_pf_pid" 2>/dev/null || true
  s3_pf_pid=""

  # d3. The DataSources and the Workspaces using them.
  data_sources "$endpoint" | kubectl apply -f - >/dev/null || fail "apply DataSources e2e-s3, e2e-s3-no-secret"
  kubectl -n "$ns" apply -f "$here/manifests/data-workspaces.yaml" >/dev/null || fail "apply Workspaces e2e-bob, e2e-carol"
  pass "DataSources e2e-s3 (Secret e2e-s3-credentials) and e2e-s3-no-secret (Secret e2e-s3-absent) applied"

  # d4. e2e-bob: Running, the bucket mounted, the credentials by reference only.
  kubectl -n "$ns" wait workspace/e2e-bob --for=jsonpath='{.status.phase}'=Running --timeout="$timeout" >/dev/null \
    || { kubectl -n "$ns" describe workspace/e2e-bob >&2; kubectl -n "$ns" describe pods -l atelier.dev/user=e2e-bob >&2
         fail "Workspace e2e-bob (DataSource e2e-s3) Running"; }
  local pod volume claim pv
  pod=$(kubectl -n "$ns" get workspace/e2e-bob -o jsonpath='{.status.podName}')
  pass "Workspace e2e-bob Running with DataSource e2e-s3 (pod $pod)"
  kubectl -n "$ns" get pod "$pod" -o json >"$work/bob-pod.json"
  volume=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[*].volumeMounts[?(@.mountPath=="/data/e2e")].name}')
  [ -n "$volume" ] || fail "the pod mounts a volume at /data/e2e"
  [ "$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[*].volumeMounts[?(@.mountPath=="/data/e2e")].readOnly}')" = true ] \
    || fail "the mount at /data/e2e is read-only"
  claim=$(kubectl -n "$ns" get pod "$pod" -o jsonpath="{.spec.volumes[?(@.name==\"$volume\")].persistentVolumeClaim.claimName}")
  [ -n "$claim" ] || fail "volume $volume comes from a PersistentVolumeClaim"
  [ "$(kubectl -n "$ns" get pvc "$claim" -o jsonpath='{.status.phase}')" = Bound ] || fail "claim $claim Bound"
  [ "$(kubectl -n "$ns" get pvc "$claim" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')" = Workspace/e2e-bob ] \
    || fail "claim $claim owned by Workspace e2e-bob"
  pv=$(kubectl -n "$ns" get pvc "$claim" -o jsonpath='{.spec.volumeName}')
  [ "$(kubectl get pv "$pv" -o jsonpath='{.spec.csi.driver} {.spec.csi.volumeHandle} {.spec.csi.nodePublishSecretRef.name} {.spec.persistentVolumeReclaimPolicy}')" \
    = "ru.yandex.s3.csi e2e-data e2e-s3-credentials Retain" ] \
    || fail "PersistentVolume $pv: csi-s3, handle e2e-data, Secret e2e-s3-credentials, Retain"
  pass "bucket mounted read-only at /data/e2e: claim $claim (owned by e2e-bob, Bound) -> PersistentVolume $pv (csi-s3)"

  local var ref
  for var in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    ref=$(kubectl -n "$ns" get pod "$pod" -o jsonpath="{.spec.containers[*].env[?(@.name==\"$var\")].valueFrom.secretKeyRef.name}/{.spec.containers[*].env[?(@.name==\"$var\")].valueFrom.secretKeyRef.key}")
    [ "$ref" = "e2e-s3-credentials/$var" ] || fail "$var from secretKeyRef e2e-s3-credentials/$var (got '$ref')"
  done
  [ "$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[*].env[?(@.name=="AWS_ENDPOINT_URL")].value}')" = "$endpoint" ] \
    || fail "AWS_ENDPOINT_URL is the source's endpoint"
  if grep -qF -e "$key" -e "$secret" "$work/bob-pod.json"; then fail "no key value inline in the pod (kubectl get pod -o json)"; fi
  kubectl -n "$ns" get workspace e2e-bob -o json >"$work/bob-workspace.json"
  kubectl -n "$ns" logs -l app.kubernetes.io/component=operator --all-containers --tail=-1 >"$work/operator.log" 2>&1 || true
  if grep -qF -e "$key" -e "$secret" "$work/bob-workspace.json" "$work/operator.log"; then
    fail "no key value in the Workspace or the operator's log"
  fi
  [ "$(kubectl -n "$ns" exec "$pod" -- printenv AWS_ACCESS_KEY_ID 2>/dev/null)" = "$key" ] \
    || fail "the container's AWS_ACCESS_KEY_ID is the Secret's"
  pass "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY from secretKeyRef e2e-s3-credentials; no key value in the pod spec, Workspace or operator log"

  local listed read
  listed=$(kubectl -n "$ns" exec "$pod" -- ls /data/e2e 2>&1) || fail "ls /data/e2e in the pod: $listed"
  printf '%s\n' "$listed" | grep -qx hello.txt || fail "ls /data/e2e lists hello.txt (got: $listed)"
  read=$(kubectl -n "$ns" exec "$pod" -- cat /data/e2e/hello.txt 2>&1) || fail "cat /data/e2e/hello.txt in the pod: $read"
  [ "$read" = "$content" ] || fail "/data/e2e/hello.txt in the pod is what was written to the bucket (got: $read)"
  pass "the file written to the bucket reads back inside the pod: cat /data/e2e/hello.txt"

  # d5. e2e-carol: the source's Secret is missing.
  local deadline=$((SECONDS + ${timeout%s}))
  until [ "$(ready_field e2e-carol reason)" = DataCredentialsNotFound ]; do
    [ $SECONDS -lt $deadline ] || { kubectl -n "$ns" get workspace/e2e-carol -o yaml >&2; fail "e2e-carol Ready=False reason DataCredentialsNotFound"; }
    sleep 2
  done
  [ "$(ready_field e2e-carol status)" = False ] || fail "e2e-carol Ready=False"
  ready_field e2e-carol message | grep -q e2e-s3-absent || fail "e2e-carol's condition names the missing Secret e2e-s3-absent"
  [ -z "$(kubectl -n "$ns" get pods -l atelier.dev/user=e2e-carol -o name)" ] || fail "e2e-carol has no pod"
  pass "e2e-carol refused: Ready=False, DataCredentialsNotFound ($(ready_field e2e-carol message)); no pod"

  # d6. Deleting the Workspace removes its claim and its volume (the operator's finalizer).
  kubectl -n "$ns" delete workspace e2e-bob e2e-carol --wait=true --timeout="$timeout" >/dev/null || fail "delete e2e-bob, e2e-carol"
  deadline=$((SECONDS + ${timeout%s}))
  while kubectl get pv "$pv" >/dev/null 2>&1 || kubectl -n "$ns" get pvc "$claim" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "claim $claim and PersistentVolume $pv removed with e2e-bob"
    sleep 2
  done
  pass "deleting e2e-bob removed claim $claim and PersistentVolume $pv"
  kubectl delete -f "$here/manifests/data-sources.yaml" --ignore-not-found >/dev/null
}

if [ "$data" = 1 ]; then
  data_story
fi

# --- the Dask story (E2E_DASK=1) -------------------------------------------------------------
dask_reason() {
  kubectl -n "$ns" get workspace/e2e-dora -o jsonpath='{.status.conditions[?(@.type=="Dask")].reason}' 2>/dev/null
}

dask_story() {
  # k1. Without the dask-kubernetes operator (its CRD), a Workspace asking for Dask is refused.
  if kubectl get crd daskclusters.kubernetes.dask.org >/dev/null 2>&1; then
    pass "the DaskCluster CRD is already on the cluster: DaskOperatorMissing not checked, its operator used"
  else
    dask_workspace | kubectl -n "$ns" apply -f - >/dev/null || fail "apply Workspace e2e-dora"
    refused=""
    for _ in $(seq 1 60); do
      refused=$(ready_field e2e-dora reason)
      [ "$refused" = DaskOperatorMissing ] && break
      sleep 2
    done
    [ "$refused" = DaskOperatorMissing ] || { kubectl -n "$ns" describe workspace/e2e-dora >&2; fail "e2e-dora Ready=False DaskOperatorMissing (got '$refused')"; }
    [ -z "$(kubectl -n "$ns" get workspace/e2e-dora -o jsonpath='{.status.podName}')" ] \
      || fail "a Workspace refused DaskOperatorMissing runs no pod"
    pass "without the dask-kubernetes operator e2e-dora is refused: Ready=False DaskOperatorMissing ($(ready_field e2e-dora message | head -c 80)...)"
    # k2. The operator's chart (CRDs and controller).
    helm install "$dask_operator_release" dask-kubernetes-operator --repo "$dask_operator_repo" \
      --version "$dask_operator_version" -n "$ns" --wait --timeout "$timeout" >/dev/null \
      || { kubectl -n "$ns" get pods -o wide >&2; fail "helm install dask-kubernetes-operator $dask_operator_version"; }
    dask_operator_installed=1
    pass "helm install dask-kubernetes-operator $dask_operator_version"
  fi
  # k3. The operator notices the CRD (its watch retries within about 30 s) and makes the cluster.
  dask_workspace | kubectl -n "$ns" apply -f - >/dev/null || fail "apply Workspace e2e-dora"
  reason=""
  for _ in $(seq 1 150); do
    reason=$(dask_reason)
    [ "$reason" = DaskRunning ] && break
    sleep 2
  done
  [ "$reason" = DaskRunning ] || { kubectl -n "$ns" describe workspace/e2e-dora >&2; kubectl -n "$ns" get daskclusters,pods >&2; fail "e2e-dora's Dask condition DaskRunning (got '$reason')"; }
  [ "$(kubectl -n "$ns" get daskautoscaler ws-e2e-dora-dask -o jsonpath='{.spec.maximum}')" = 2 ] \
    || fail "DaskAutoscaler ws-e2e-dora-dask with maximum 2"
  kubectl -n "$ns" get daskcluster ws-e2e-dora-dask >/dev/null || fail "DaskCluster ws-e2e-dora-dask"
  kubectl -n "$ns" get networkpolicy ws-e2e-dora-dask >/dev/null || fail "NetworkPolicy ws-e2e-dora-dask"
  pass "e2e-dora's Dask cluster runs: DaskRunning, workers $(kubectl -n "$ns" get workspace/e2e-dora -o jsonpath='{.status.dask.workers}'), scheduler $(kubectl -n "$ns" get workspace/e2e-dora -o jsonpath='{.status.dask.schedulerAddress}')"
  # k4. Deleted with its Workspace (owner reference).
  kubectl -n "$ns" delete workspace e2e-dora --wait=true --timeout="$timeout" >/dev/null || fail "delete Workspace e2e-dora"
  kubectl -n "$ns" wait daskcluster/ws-e2e-dora-dask --for=delete --timeout="$timeout" >/dev/null 2>&1 || true
  kubectl -n "$ns" get daskcluster ws-e2e-dora-dask >/dev/null 2>&1 && fail "DaskCluster ws-e2e-dora-dask gone with its Workspace"
  pass "e2e-dora deleted: its DaskCluster went with it"
  if [ "$dask_operator_installed" = 1 ]; then
    helm uninstall "$dask_operator_release" -n "$ns" --wait >/dev/null || fail "helm uninstall $dask_operator_release"
    dask_operator_installed=0
  fi
}

if [ "$dask" = 1 ]; then
  dask_story
fi

# --- the BatchJob story (E2E_BATCH=1) ---------------------------------------------------------
# batchjob_field NAME JSONPATH: a field of BatchJob NAME
batchjob_field() {
  kubectl -n "$ns" get "batchjob/$1" -o jsonpath="{$2}" 2>/dev/null
}

# wait_batchjob NAME PHASE: until BatchJob NAME shows PHASE (bounded by $timeout), else its state and fail
wait_batchjob() {
  kubectl -n "$ns" wait "batchjob/$1" --for=jsonpath='{.status.phase}'="$2" --timeout="$timeout" >/dev/null 2>&1 && return 0
  kubectl -n "$ns" get "batchjob/$1" -o yaml >&2 || true
  kubectl -n "$ns" get jobs,pods -l "atelier.dev/batchjob=$1" -o wide >&2 || true
  fail "BatchJob $1 $2 (phase '$(batchjob_field "$1" .status.phase)', reason '$(batchjob_field "$1" .status.reason)')"
}

# apply_step STEP: the BatchJob of batch-jobs.yaml labelled e2e.atelier.dev/step=STEP
apply_step() {
  kubectl -n "$ns" apply -f "$here/manifests/batch-jobs.yaml" -l "e2e.atelier.dev/step=$1" >/dev/null \
    || fail "apply the BatchJob of step $1"
}

batch_story() {
  local home="home-$batch_user" pod logs
  # b1. e2e-erin never started a workspace: her home claim does not exist yet.
  kubectl -n "$ns" get pvc "$home" >/dev/null 2>&1 && fail "no claim $home before $batch_user's first job"
  apply_step sum
  # b2. Succeeded, its output in its pod's log; the home claim made by the operator.
  wait_batchjob e2e-sum Succeeded
  [ "$(batchjob_field e2e-sum .status.exitCode)" = 0 ] || fail "e2e-sum exit code 0"
  [ "$(batchjob_field e2e-sum .status.system)/$(batchjob_field e2e-sum .status.nodePool)" = kubernetes/e2e-batch ] \
    || fail "e2e-sum ran as a Kubernetes Job on e2e-batch"
  pod=$(batchjob_field e2e-sum .status.podName)
  [ -n "$pod" ] || fail "e2e-sum names its pod"
  logs=$(kubectl -n "$ns" logs "pod/$pod" 2>&1) || fail "kubectl logs pod/$pod: $logs"
  printf '%s\n' "$logs" | grep -qx "e2e batch sum 45" || fail "the log of pod $pod shows the job's output (got: $logs)"
  pass "BatchJob e2e-sum Succeeded, exit code 0; kubectl logs pod/$pod: $logs"
  [ "$(kubectl -n "$ns" get pvc "$home" -o jsonpath='{.metadata.labels.atelier\.dev/workspace}')" = "$batch_user" ] \
    || fail "claim $home made with the labels of $batch_user's default workspace"
  [ -z "$(kubectl -n "$ns" get pvc "$home" -o jsonpath='{.metadata.ownerReferences}')" ] \
    || fail "claim $home has no owner (a home outlives its jobs)"
  pass "the operator made $batch_user's home claim $home for her first job (her default workspace's labels, no owner)"

  # b3. A failing command: Failed with its exit code.
  apply_step exit3
  wait_batchjob e2e-exit3 Failed
  [ "$(batchjob_field e2e-exit3 .status.exitCode)" = 3 ] \
    || fail "e2e-exit3 exit code 3 (got '$(batchjob_field e2e-exit3 .status.exitCode)')"
  pass "BatchJob e2e-exit3 Failed, exit code 3 ($(batchjob_field e2e-exit3 .status.message))"

  # b4. Cancelled while it runs: its Job (and pod) deleted.
  apply_step cancel
  wait_batchjob e2e-sleep Running
  kubectl -n "$ns" patch batchjob/e2e-sleep --type merge -p '{"spec":{"cancel":true}}' >/dev/null || fail "cancel e2e-sleep"
  wait_batchjob e2e-sleep Cancelled
  kubectl -n "$ns" wait job/e2e-sleep --for=delete --timeout="$timeout" >/dev/null 2>&1 || true
  kubectl -n "$ns" get job/e2e-sleep >/dev/null 2>&1 && fail "Job e2e-sleep deleted with the cancel"
  pass "BatchJob e2e-sleep cancelled while Running: Cancelled, its Job deleted"

  # b5. Deleting the BatchJobs deletes their Jobs; the home stays.
  kubectl -n "$ns" delete batchjob e2e-sum e2e-exit3 e2e-sleep --wait=true --timeout="$timeout" >/dev/null || fail "delete the BatchJobs"
  kubectl -n "$ns" wait job/e2e-sum job/e2e-exit3 --for=delete --timeout="$timeout" >/dev/null 2>&1 || true
  [ -z "$(kubectl -n "$ns" get jobs -l atelier.dev/batchjob -o name)" ] || fail "the BatchJobs' Jobs go with them"
  kubectl -n "$ns" get pvc "$home" >/dev/null || fail "claim $home stays when the jobs go"
  pass "deleting the BatchJobs removed their Jobs; claim $home stays"
}

kueue_story() {
  local workload
  # q1. Kueue from its release manifest, unless the cluster has it.
  if kubectl get crd clusterqueues.kueue.x-k8s.io >/dev/null 2>&1; then
    pass "Kueue already on the cluster (CRD clusterqueues.kueue.x-k8s.io): the story uses it"
  else
    kubectl apply --server-side -f "$kueue_manifest" >/dev/null || fail "install Kueue $kueue_version ($kueue_manifest)"
    kueue_installed=1
    kubectl wait deploy/kueue-controller-manager -n kueue-system --for=condition=available --timeout="$timeout" >/dev/null \
      || { kubectl -n kueue-system get pods -o wide >&2; fail "Kueue $kueue_version available"; }
    pass "Kueue $kueue_version installed from its release manifest"
  fi
  # q2. The held queue, the pool and the job (Kueue's webhook may answer a moment after its
  # Deployment is available: a few tries).
  kueue_applied=1
  local applied=0
  for _ in $(seq 1 30); do
    kubectl -n "$ns" apply -f "$here/manifests/batch-kueue.yaml" >/dev/null 2>&1 && { applied=1; break; }
    sleep 2
  done
  [ "$applied" = 1 ] || { kubectl -n "$ns" apply -f "$here/manifests/batch-kueue.yaml" >&2; fail "apply batch-kueue.yaml"; }
  pass "ClusterQueue atelier-e2e-cluster-queue (held), LocalQueue atelier-e2e-queue, NodePool e2e-queued, BatchJob e2e-queued-sum applied"
  # q3. Queued while Kueue holds it: the Job suspended and labelled, its Workload not admitted.
  wait_batchjob e2e-queued-sum Queued
  [ "$(batchjob_field e2e-queued-sum .status.reason)" = WaitingForAdmission ] \
    || fail "e2e-queued-sum waits for Kueue's admission (reason '$(batchjob_field e2e-queued-sum .status.reason)')"
  local deadline=$((SECONDS + ${timeout%s}))
  workload=""
  until [ -n "$workload" ]; do
    workload=$(kubectl -n "$ns" get workloads.kueue.x-k8s.io -o name 2>/dev/null | head -n 1)
    [ -n "$workload" ] && break
    [ $SECONDS -lt $deadline ] || fail "Kueue made a Workload for Job e2e-queued-sum"
    sleep 2
  done
  [ "$(kubectl -n "$ns" get job/e2e-queued-sum -o jsonpath='{.spec.suspend}')" = true ] || fail "Job e2e-queued-sum suspended"
  [ "$(kubectl -n "$ns" get job/e2e-queued-sum -o jsonpath='{.metadata.labels.kueue\.x-k8s\.io/queue-name}')" = atelier-e2e-queue ] \
    || fail "Job e2e-queued-sum labelled kueue.x-k8s.io/queue-name=atelier-e2e-queue"
  [ -z "$(kubectl -n "$ns" get "$workload" -o jsonpath='{.status.admission}')" ] || fail "$workload not admitted while the queue is held"
  [ -z "$(kubectl -n "$ns" get pods -l atelier.dev/batchjob=e2e-queued-sum -o name)" ] || fail "no pod before admission"
  [ "$(batchjob_field e2e-queued-sum .status.phase)" = Queued ] || fail "e2e-queued-sum still Queued"
  pass "e2e-queued-sum Queued (WaitingForAdmission): Job suspended, $workload not admitted, no pod"
  # q4. Released: Kueue admits it, it runs to the end.
  kubectl patch clusterqueue atelier-e2e-cluster-queue --type merge -p '{"spec":{"stopPolicy":"None"}}' >/dev/null \
    || fail "release ClusterQueue atelier-e2e-cluster-queue"
  wait_batchjob e2e-queued-sum Succeeded
  [ "$(batchjob_field e2e-queued-sum .status.exitCode)" = 0 ] || fail "e2e-queued-sum exit code 0"
  logs=$(kubectl -n "$ns" logs "pod/$(batchjob_field e2e-queued-sum .status.podName)" 2>&1) || true
  printf '%s\n' "$logs" | grep -qx "e2e queued sum 45" || fail "the log of e2e-queued-sum's pod shows its output (got: $logs)"
  pass "Kueue admitted e2e-queued-sum once the queue was released: Succeeded, exit code 0, log '$logs'"
  # q5. Clean up (the ClusterQueue waits for its workloads to go).
  kubectl -n "$ns" delete batchjob e2e-queued-sum --wait=true --timeout="$timeout" >/dev/null || fail "delete e2e-queued-sum"
  kubectl -n "$ns" delete -f "$here/manifests/batch-kueue.yaml" --ignore-not-found --wait=true --timeout="$timeout" >/dev/null \
    || fail "delete the queues, flavor and pool"
  kueue_applied=0
  if [ "$kueue_installed" = 1 ]; then
    kubectl delete -f "$kueue_manifest" --ignore-not-found --timeout="$timeout" >/dev/null || fail "uninstall Kueue"
    kueue_installed=0
  fi
  pass "the Kueue part cleaned up"
}

if [ "$batch" = 1 ]; then
  batch_story
  if [ "$kueue" = 1 ]; then
    kueue_story
  fi
fi

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
