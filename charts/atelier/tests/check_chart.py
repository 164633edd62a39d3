#!/usr/bin/env python3
"""Checks the Atelier Helm chart without a cluster (run by tests/chart.rs with ATELIER_PEERS=1).

    python charts/atelier/tests/check_chart.py                  # every check below
    python charts/atelier/tests/check_chart.py --render VALUES [--name N] [--namespace NS] [--out F]
                                                                 # render one values file, validate it

Checks: `helm lint` (helm-python-sdk); rendering with the default values, each examples/*.yaml
and a few variants; every rendered built-in object against the official schemas of the oldest
and newest supported Kubernetes (kubernetes-validate, strict: unknown fields fail); Atelier
custom resources against the CRDs' openAPIV3Schema (known fields, required fields, types); the
values schema refuses a typo and a wrong type, naming the key; security contexts, checksum
annotations; that the rules bound to the operator's and the hub's ServiceAccounts are exactly
the API calls of src/rbac.rs (`--rbac-table`, written by tests/chart.rs); that the chart's
crds/ equal the top-level crds/; and the operator builders' golden objects
(tests/fixtures/builders/*.objects.json, which src/operator/workspace/build_tests.rs compares
the builders' output with) against the same Kubernetes schemas.

    python charts/atelier/tests/check_chart.py --objects FILE...  # only validate golden objects
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml
from helm_python import Chart

CHART = Path(__file__).resolve().parent.parent
ROOT = CHART.parent.parent
# Oldest supported (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ["1.33.0", kubernetes_validate.utils.latest_version()]
# Kinds kubernetes-validate has no schema for: checked otherwise (or only parsed).
NOT_BUILTIN = {
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The client secrets the centre example's Secrets hold (examples/centre.yaml, kubectl create secret).
CENTRE_SECRET_VALUES = ["keycloak-client-secret-CHANGE-ME", "egi-checkin-secret-CHANGE-ME"]

failures: list[str] = []


def check(ok: bool, what: str) -> bool:
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)
    return ok


def load_values(path: Path | str | None) -> dict:
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


# The API versions a cluster with the Prometheus Operator serves besides the built-in ones.
MONITORING = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"]


def render(values: dict, name: str = "atelier", namespace: str = "atelier",
           api_versions: list[str] | None = None) -> list[dict]:
    """The chart's objects for `values`, as dicts (empty documents dropped). `api_versions` are
    the extra API versions the cluster serves (`helm template --api-versions`): the native
    render takes them, helm-python-sdk's Chart.render does not pass them on."""
    chart = Chart.load(str(CHART))
    if api_versions:
        from helm_python import _native
        from helm_python.chart import _dumps
        opts = {"name": name, "namespace": namespace, "api_versions": api_versions}
        rendered = json.loads(_native.call_string("helm_render", chart._raw(), _dumps(values), json.dumps(opts)))
    else:
        rendered = chart.render(values, name=name, namespace=namespace)
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


def crd_schemas() -> dict[str, dict]:
    """kind -> openAPIV3Schema of the served version, from the top-level crds/."""
    out = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("served"))
        out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def conforms(value, schema: dict, where: str) -> list[str]:
    """The ways `value` breaks `schema` (types, known properties, required; no CEL)."""
    errors = []
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return errors
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in types and (not isinstance(value, types[kind]) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties")
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{where}: missing required {req}")
        for key, sub in value.items():
            if props is not None and key in props:
                errors += conforms(sub, props[key], f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += conforms(sub, schema["additionalProperties"], f"{where}.{key}")
            elif props is not None:
                errors.append(f"{where}: unknown field {key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += conforms(item, schema["items"], f"{where}[{i}]")
    return errors


def validate(docs: list[dict], label: str, expect_builtin: bool = True) -> None:
    """Every object: built-in kinds against Kubernetes' schemas, Atelier CRs against the CRDs."""
    schemas = crd_schemas()
    builtin = 0
    for doc in docs:
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        name = f"{kind}/{doc.get('metadata', {}).get('name')}"
        if not (api and kind and doc["metadata"].get("name")):
            check(False, f"{label}: {name} has apiVersion, kind and metadata.name")
            continue
        if api.startswith("atelier.dev/"):
            errors = conforms(doc.get("spec", {}), schemas[kind]["properties"]["spec"], "spec")
            check(api == "atelier.dev/v1alpha1" and not errors, f"{label}: {name} matches its CRD {errors}")
            continue
        if (api, kind) in NOT_BUILTIN:
            check("spec" in doc, f"{label}: {name} has a spec")
            continue
        if api == "kubernetes.dask.org/v1":
            check_dask(doc, f"{label}: {name}")
            continue
        builtin += 1
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except Exception as e:  # noqa: BLE001 - the message is the finding
                caught = e if hasattr(e, "absolute_path") else None
                why = f"{'/'.join(map(str, caught.absolute_path))}: {caught.message}" if caught else str(e)
                check(False, f"{label}: {name} valid for Kubernetes {version}: {why[:300]}")
    if expect_builtin or builtin:
        check(builtin > 0, f"{label}: {builtin} built-in objects valid for Kubernetes {' and '.join(KUBE_VERSIONS)}")


# The dask-kubernetes CRDs embed Kubernetes 1.21's pod and Service schemas; 1.25 is the oldest
# kubernetes-validate holds, and a field it knows that 1.21 lacked is caught by the operator's
# own builder test (src/operator/workspace/build/dask_tests.rs).
DASK_KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]


def check_dask(doc: dict, label: str) -> None:
    """A DaskCluster's scheduler and worker pods and scheduler Service are valid Pod and Service
    specs; a DaskAutoscaler names its cluster with minimum <= maximum."""
    spec = doc.get("spec", {})
    if doc["kind"] == "DaskAutoscaler":
        lo, hi = spec.get("minimum"), spec.get("maximum")
        check(bool(spec.get("cluster")) and isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi,
              f"{label}: names its cluster, 0 <= minimum <= maximum ({spec})")
        return
    if doc["kind"] != "DaskCluster":
        check(False, f"{label}: a dask-kubernetes kind the operator does not write")
        return
    meta = {"name": doc["metadata"]["name"], "namespace": doc["metadata"].get("namespace", "default")}
    parts = [
        ({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec["scheduler"]["spec"]}, "scheduler pod"),
        ({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec["scheduler"]["service"]},
         "scheduler Service"),
        ({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec["worker"]["spec"]}, "worker pod"),
    ]
    for obj, what in parts:
        for version in DASK_KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                ok, why = True, ""
            except Exception as e:  # noqa: BLE001 - the message is the finding
                caught = e if hasattr(e, "absolute_path") else None
                ok = False
                why = f"{'/'.join(map(str, caught.absolute_path))}: {caught.message}" if caught else str(e)
            check(ok, f"{label}: {what} valid for Kubernetes {version} {why[:300]}")
    idle = spec.get("idleTimeout", 0)
    check(isinstance(idle, int) and idle >= 0,
          f"{label}: idleTimeout is the dask operator's integer seconds, 0 or more ({idle!r})")
    envs = [e.get("name") for c in spec["scheduler"]["spec"]["containers"] for e in c.get("env", [])]
    check("DASK_DISTRIBUTED__SCHEDULER__IDLE_TIMEOUT" not in envs,
          f"{label}: no scheduler idle-timeout (it would exit and be restarted; idleTimeout deletes the cluster)")
    ports = {p.get("name"): p.get("port") for p in spec["scheduler"]["service"].get("ports", [])}
    check(ports.get("tcp-comm") == 8786 and ports.get("http-dashboard") == 8787,
          f"{label}: the scheduler Service's ports are named as the dask operator looks them up ({ports})")


def pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def check_workloads(docs: list[dict], label: str) -> None:
    """Non-root, read-only root filesystem, no capabilities, seccomp; config checksums."""
    for doc, template in pod_specs(docs):
        name = doc["metadata"]["name"]
        pod = template["spec"]
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
              f"{label}: {name} pod runs as non-root with seccomp RuntimeDefault")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                  and sc.get("capabilities", {}).get("drop") == ["ALL"],
                  f"{label}: {name}/{c['name']} read-only root, no privilege escalation, drops ALL")
            check(":" in c["image"] and not c["image"].endswith(":latest") and not c["image"].endswith(":"),
                  f"{label}: {name}/{c['name']} image pinned ({c['image']})")
        if any(ref.get("configMapRef") for c in pod["containers"] for ref in c.get("envFrom", [])):
            check("checksum/config" in template["metadata"].get("annotations", {}),
                  f"{label}: {name} rolls on config change (checksum/config)")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[dict], kind: str, suffix: str) -> dict | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)), None)


def verbs(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# The API calls of each component (src/rbac.rs CALLS), as tests/chart.rs writes them:
# component -> namespaceMode -> {"Role"|"ClusterRole": {"group|resource": [verbs]}}.
RBAC_TABLE: dict | None = None


def granted(docs: list[dict], service_account: str,
            namespace: str) -> tuple[dict[str, list[dict]], list[dict], dict[str, set[str]]]:
    """The rules bound to a ServiceAccount: namespace -> rules (RoleBindings), cluster-wide rules,
    and namespace -> names of the bound Roles."""
    roles, cluster, names = {}, [], {}
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   and s.get("namespace") == namespace for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace")
        if ref["kind"] == "ClusterRole":
            role = next((d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == ref["name"]), None)
        else:
            role = next((d for d in by_kind(docs, "Role") if d["metadata"]["name"] == ref["name"]
                         and d["metadata"].get("namespace") == where), None)
        check(role is not None, f"{binding['kind']}/{binding['metadata']['name']} refers to a rendered {ref['kind']} {ref['name']}")
        rules = (role or {}).get("rules", [])
        if binding["kind"] == "ClusterRoleBinding":
            cluster += rules
        else:
            roles.setdefault(where, []).extend(rules)
            names.setdefault(where, set()).add(ref["name"])
    return roles, cluster, names


def check_rbac(docs: list[dict], label: str, mode: str) -> None:
    """Each component's bound rules are exactly its API calls (src/rbac.rs): all granted, nothing more."""
    if RBAC_TABLE is None:
        return  # --render without --rbac-table; main_all() requires the table
    for component in ("operator", "hub"):
        account = find(docs, "ServiceAccount", f"-{component}")
        check(account is not None, f"{label}: the {component} has a ServiceAccount")
        if account is None:
            continue
        roles, cluster, role_names = granted(docs, account["metadata"]["name"], account["metadata"]["namespace"])
        want = RBAC_TABLE[component][mode]
        want_role = {tuple(k.split("|", 1)): set(v) for k, v in want["Role"].items()}
        want_cluster = {tuple(k.split("|", 1)): set(v) for k, v in want["ClusterRole"].items()}
        want_own = {tuple(k.split("|", 1)): set(v) for k, v in want.get("OwnRole", {}).items()}
        got_cluster = verbs(cluster)
        check(got_cluster == want_cluster,
              f"{label}: the {component}'s cluster-wide rules are exactly its calls ({mode})"
              + ("" if got_cluster == want_cluster else f": missing {diff(want_cluster, got_cluster)}, extra {diff(got_cluster, want_cluster)}"))
        # Namespaced rules: the workspace namespace's calls (shared mode) and the calls in the
        # component's own (release) namespace (the Lease), merged where the two namespaces are one.
        release_ns = account["metadata"]["namespace"]
        want_by_ns: dict[str, dict] = {}
        for ns, rules in ((None, want_role), (release_ns, want_own)):
            if not rules:
                continue
            if ns is None:
                ns = find(docs, "ConfigMap", "-hub")["data"]["ATELIER_WORKSPACE_NAMESPACE"]
            for key, vs in rules.items():
                want_by_ns.setdefault(ns, {}).setdefault(key, set()).update(vs)
        got_by_ns = {ns: verbs(rules) for ns, rules in roles.items()}
        check(got_by_ns == want_by_ns,
              f"{label}: the {component}'s Roles ({', '.join(sorted(want_by_ns)) or 'none'}) are exactly its namespaced calls ({mode})"
              + ("" if got_by_ns == want_by_ns else f": want {want_by_ns}, got {got_by_ns}"))
        if want_own:
            own_role = account["metadata"]["name"] + want["OwnRoleSuffix"]
            check(own_role in role_names.get(release_ns, set()),
                  f"{label}: the {component}'s own-namespace calls are granted by the Role {own_role} in {release_ns}")
        check(not any("resourceNames" in r or "nonResourceURLs" in r for r in cluster + [r for rs in roles.values() for r in rs]),
              f"{label}: the {component}'s rules name no resourceNames nor nonResourceURLs")


def diff(a: dict, b: dict) -> dict:
    """What `a` grants that `b` does not, as {group/resource: verbs}."""
    out = {}
    for key, vs in a.items():
        extra = vs - b.get(key, set())
        if extra:
            out[f"{key[0]}/{key[1]}"] = sorted(extra)
    return out


def check_priority_classes(docs: list[dict], values: dict, label: str) -> None:
    """Every pool's priorityClassName is a rendered PriorityClass or declared external."""
    created = {d["metadata"]["name"] for d in by_kind(docs, "PriorityClass")}
    external = set(values.get("externalPriorityClasses", []))
    named = {d["metadata"]["name"]: d["spec"].get("priorityClassName") for d in by_kind(docs, "NodePool")}
    missing = {pool: pc for pool, pc in named.items() if pc and pc not in created | external}
    check(not missing, f"{label}: every pool's PriorityClass is created by the chart or external ({missing or sorted(created)})")


def check_render(values: dict, label: str, name: str = "atelier", namespace: str = "atelier",
                 api_versions: list[str] | None = None) -> list[dict]:
    try:
        docs = render(values, name=name, namespace=namespace, api_versions=api_versions)
    except helm_python.HelmError as e:
        check(False, f"{label}: renders ({e})")
        return []
    check(bool(docs), f"{label}: renders ({len(docs)} objects)")
    validate(docs, label)
    check_workloads(docs, label)
    check_rbac(docs, label, values.get("namespaceMode", "shared"))
    check_priority_classes(docs, values, label)
    return docs


def refused(values: dict, key: str, label: str) -> None:
    """A values file holding `values` is refused at render, with `key` in the message."""
    chart = Chart.load(str(CHART))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        from_file = load_values(f.name)
    try:
        chart.render(from_file, name="atelier", namespace="atelier")
    except helm_python.HelmError as e:
        check(key in str(e), f"chart refuses {label}, naming {key!r}: {' '.join(str(e).split())[-120:]}")
        return
    check(False, f"chart refuses {label}")


# hub.oidc.providers key -> the hub's --oidc-config key (src/hub/auth/oidc.rs, OidcProviderEntry).
OIDC_KEYS = {"name": "name", "displayName": "display_name", "issuer": "issuer", "clientId": "client_id",
             "scopes": "scopes", "usernameClaim": "username_claim", "groupClaims": "group_claims",
             "adminGroups": "admin_groups", "allowedGroups": "allowed_groups"}


def oidc_entry_fields() -> set[str]:
    """The fields the hub accepts per provider (deny_unknown_fields), read from src/hub/auth/oidc.rs."""
    src = (ROOT / "src/hub/auth/oidc.rs").read_text()
    body = src.split("pub struct OidcProviderEntry {", 1)[1].split("\n}", 1)[0]
    return set(re.findall(r"^\s*pub (\w+):", body, re.M))


def walk(value, path=()):
    """(path, leaf) for every leaf of a rendered object."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, path + (i,))
    else:
        yield path, value


def hub_oidc(docs: list[dict]) -> tuple[dict | None, dict, dict]:
    """The hub's parsed --oidc-config (None without one), its pod template and its container."""
    hub = find(docs, "Deployment", "-hub")
    template = hub["spec"]["template"]
    container = template["spec"]["containers"][0]
    path = find(docs, "ConfigMap", "-hub")["data"].get("ATELIER_OIDC_CONFIG")
    if path is None:
        return None, template, container
    mount = next((m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    volume = next((v for v in template["spec"]["volumes"] if mount and v["name"] == mount["name"]), {})
    cm = next((d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == volume.get("configMap", {}).get("name")), None)
    text = (cm or {}).get("data", {}).get(path[len(mount["mountPath"].rstrip("/")) + 1:] if mount else "")
    return (yaml.safe_load(text) if text else {}), template, container


def check_oidc(docs: list[dict], values: dict, label: str) -> None:
    """The hub's mounted --oidc-config holds exactly the values' providers; secrets only by reference."""
    providers = values["hub"]["oidc"]["providers"]
    config, template, container = hub_oidc(docs)
    check(config is not None and list(config) == ["providers"],
          f"{label}: ATELIER_OIDC_CONFIG names a file mounted from the hub's OIDC ConfigMap")
    if not config:
        return
    got = config["providers"]
    check([p["name"] for p in got] == [p["name"] for p in providers],
          f"{label}: the OIDC config holds exactly the providers, in order ({[p['name'] for p in got]})")
    allowed = oidc_entry_fields()
    env = {e["name"]: e for e in container.get("env", [])}
    sources = [s["secret"] for v in template["spec"]["volumes"] for s in v.get("projected", {}).get("sources", []) if "secret" in s]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for want, entry in zip(providers, got):
        name = want["name"]
        check(set(entry) <= allowed, f"{label}: {name}: only keys the hub accepts ({sorted(set(entry) - allowed)})")
        expect = {OIDC_KEYS[k]: v for k, v in want.items() if k in OIDC_KEYS}
        check({k: v for k, v in entry.items() if not k.startswith("client_secret")} == expect,
              f"{label}: {name}: settings rendered as given")
        ref = want.get("clientSecret")
        if ref is None:
            check(not any(k.startswith("client_secret") for k in entry), f"{label}: {name}: a public client (no secret)")
        elif ref.get("mountAs") == "env":
            var = entry.get("client_secret_env")
            key_ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check("client_secret_file" not in entry and key_ref == {"name": ref["existingSecret"], "key": ref["key"]},
                  f"{label}: {name}: client secret from a secretKeyRef ({var})")
        else:
            path = entry.get("client_secret_file", "")
            volume = next((v for v in template["spec"]["volumes"] if "projected" in v
                           and path.startswith(mounts.get(v["name"], "\0") + "/")), None)
            rel = path[len(mounts[volume["name"]]) + 1:] if volume else None
            check("client_secret_env" not in entry and any(
                      s["name"] == ref["existingSecret"] and {"key": ref["key"], "path": rel} in s.get("items", [])
                      for s in sources),
                  f"{label}: {name}: client secret mounted from Secret {ref['existingSecret']} at {path}")
    # No secret inline: the hub's config names secrets, and each existing Secret appears only as a
    # secretKeyRef or a projected volume source; no Secret object is rendered for them.
    names = {p["clientSecret"]["existingSecret"] for p in providers if p.get("clientSecret")}
    places = sorted({path[-2] if path[-1] == "name" else path[-1] for d in docs for path, leaf in walk(d) if leaf in names})
    check(not any(k in e for e in got for k in ("client_secret", "clientSecret"))
          and places in ([], ["secret"], ["secretKeyRef"], ["secret", "secretKeyRef"])
          and not any(d["kind"] == "Secret" and d["metadata"]["name"] in names for d in docs),
          f"{label}: client secrets only by secretKeyRef or volume ({places})")
    check("checksum/oidc" in template["metadata"]["annotations"], f"{label}: the hub rolls on an OIDC change (checksum/oidc)")


def check_operator_replicas(docs: list[dict], label: str, replicas: int) -> None:
    """`replicas` operators with the leader election's downward API env; a PDB with more than one."""
    operator = find(docs, "Deployment", "-operator")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container.get("env", [])}
    check(operator["spec"]["replicas"] == replicas
          and env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace",
          f"{label}: {replicas} operator replica(s), POD_NAME and POD_NAMESPACE from the downward API")
    config = find(docs, "ConfigMap", "-operator")["data"]
    check(config.get("ATELIER_LEASE_NAME") == operator["metadata"]["name"] and "ATELIER_LEADER_ELECTION" not in config,
          f"{label}: leader election on, the Lease named like the Deployment ({config.get('ATELIER_LEASE_NAME')})")
    pod = operator["spec"]["template"]
    spread = (pod["spec"].get("affinity", {}).get("podAntiAffinity", {})
              .get("preferredDuringSchedulingIgnoredDuringExecution", []))
    if replicas > 1:
        check(len(spread) == 1 and spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
              and spread[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
              f"{label}: the operator replicas prefer different nodes (podAntiAffinity on the hostname)")
    else:
        check("affinity" not in pod["spec"], f"{label}: no anti-affinity for one operator")
    pdb = find(docs, "PodDisruptionBudget", "-operator")
    if replicas > 1:
        check(pdb is not None and pdb["spec"].get("minAvailable") == 1
              and pdb["spec"]["selector"]["matchLabels"].items() <= operator["spec"]["template"]["metadata"]["labels"].items(),
              f"{label}: a PodDisruptionBudget keeps one operator (minAvailable 1)")
    else:
        check(pdb is None, f"{label}: no operator PodDisruptionBudget with one replica")


def check_crds_identical() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    same = top == chart and all(filecmp.cmp(ROOT / "crds" / n, CHART / "crds" / n, shallow=False) for n in top)
    check(same, f"charts/atelier/crds/ equals crds/ ({len(top)} CRDs)")


BUILDER_GOLDENS = ROOT / "tests" / "fixtures" / "builders"


def check_builder_objects(paths: list[Path]) -> None:
    """The operator's built objects (JSON arrays the builder tests compare with) are valid
    Kubernetes objects: a pod the operator would create, a PersistentVolume, its claim..."""
    check(bool(paths), f"builder golden objects found ({BUILDER_GOLDENS}/*.objects.json)")
    for path in paths:
        with open(path) as f:
            docs = json.load(f)
        check(isinstance(docs, list) and all(isinstance(d, dict) for d in docs),
              f"{path.name}: a JSON array of objects")
        validate(docs, path.name)


def main_all() -> int:
    check(RBAC_TABLE is not None, "the API calls of src/rbac.rs are given (--rbac-table; tests/chart.rs writes them)")
    report = helm_python.lint(str(CHART), strict=False)
    errors = report.get("errors", []) + [m["error"] for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    check(not errors, f"helm lint ({errors})")
    for version in ("v1.33.0", "v" + KUBE_VERSIONS[-1]):
        r = helm_python.lint(str(CHART), kube_version=version)
        check(not r.get("errors"), f"helm lint --kube-version {version}")

    check_builder_objects(sorted(BUILDER_GOLDENS.glob("*.objects.json")))

    docs = check_render({}, "defaults")
    kinds = {d["kind"] for d in docs}
    check({"Deployment", "Service", "ServiceAccount", "ClusterRole", "Role", "NetworkPolicy",
           "PodDisruptionBudget", "PersistentVolumeClaim", "Secret", "ConfigMap"} <= kinds,
          f"defaults: the expected kinds ({sorted(kinds)})")
    hub = find(docs, "Deployment", "-hub")
    check(hub is not None and hub["spec"]["replicas"] == 1 and hub["spec"]["strategy"]["type"] == "Recreate",
          "defaults (sqlite-pvc): one hub replica, Recreate")
    args = hub["spec"]["template"]["spec"]["containers"][0]
    config = find(docs, "ConfigMap", "-hub")["data"]
    check(args["args"] == ["hub"] and config["ATELIER_BACKEND"] == "kubernetes",
          "defaults: the hub runs `atelier hub` with ATELIER_BACKEND=kubernetes")
    check("ATELIER_SERVICE_IDLE_CULLER_TOKEN" in {e["name"] for e in args["env"]}
          and find(docs, "Secret", "-idle-culler") is not None and find(docs, "Deployment", "-idle-culler") is not None,
          "defaults: idle culler Deployment, its token Secret, and the hub's service token")
    check("ATELIER_PROXY_SERVICES" not in find(docs, "ConfigMap", "-proxy")["data"],
          "defaults: no service routes in the proxy")
    gateway = {"name": "dask-gateway", "url": "http://traefik-dask-gateway.dask.svc:80",
               "scopes": ["read:users", "access:servers"],
               "tokenSecret": {"name": "dask-gateway-hub-token", "key": "token"}}
    plain = {"name": "stats", "scopes": ["read:metrics"], "tokenSecret": {"name": "stats-token", "key": "t"}}
    served = check_render({"services": [gateway, plain]}, "a dask-gateway service")
    hub_env = {e["name"]: e for e in find(served, "Deployment", "-hub")["spec"]["template"]["spec"]["containers"][0]["env"]}
    hub_services = find(served, "ConfigMap", "-hub")["data"].get("ATELIER_SERVICES", "").split(";")
    check(hub_services[1:] == ["dask-gateway@http://traefik-dask-gateway.dask.svc:80=read:users,access:servers",
                               "stats=read:metrics"] and hub_services[0].startswith("idle-culler="),
          f"services: the hub's --service NAME@URL=SCOPES after the culler's ({hub_services})")
    check(hub_env.get("ATELIER_SERVICE_DASK_GATEWAY_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
          == {"name": "dask-gateway-hub-token", "key": "token"}
          and "secretKeyRef" in hub_env.get("ATELIER_SERVICE_STATS_TOKEN", {}).get("valueFrom", {}),
          "services: each token from its Secret as ATELIER_SERVICE_<NAME>_TOKEN")
    check(find(served, "ConfigMap", "-proxy")["data"].get("ATELIER_PROXY_SERVICES")
          == "dask-gateway@http://traefik-dask-gateway.dask.svc:80",
          "services: the proxy's --service NAME@URL for those with a URL only")
    refused({"services": [{"name": "Dask Gateway", "tokenSecret": {"name": "s", "key": "k"}}]},
            "name", "a service name that is no DNS label")
    refused({"services": [{"name": "dask-gateway", "url": "http://gw/path", "tokenSecret": {"name": "s", "key": "k"}}]},
            "url", "a service URL with a path")
    refused({"services": [{"name": "dask-gateway"}]}, "tokenSecret", "a service without its token Secret")
    policy = find(docs, "NetworkPolicy", "-workspaces")
    sources = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for rule in (policy or {}).get("spec", {}).get("ingress", []) for p in rule.get("from", [])]
    check(sorted(sources) == ["hub", "proxy"], f"defaults: workspaces reachable only from the proxy and the hub ({sources})")
    check_operator_replicas(docs, "defaults", replicas=2)
    operator_policy = find(docs, "NetworkPolicy", "-operator")
    check(operator_policy is not None and operator_policy["spec"]["policyTypes"] == ["Ingress", "Egress"],
          "defaults: the operator's egress is restricted (DNS and the API server)")
    check(len(operator_policy["spec"]["egress"]) == 2,
          "defaults: the operator's egress is DNS and the API server only")
    probing = check_render({"operator": {"networkPolicy": {"dataEndpoints": [
        {"cidr": "10.20.0.0/16", "ports": [9000, 8333]}]}}}, "an S3 endpoint the operator probes")
    egress = find(probing, "NetworkPolicy", "-operator")["spec"]["egress"]
    check(egress[2:] == [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                          "ports": [{"port": 9000, "protocol": "TCP"}, {"port": 8333, "protocol": "TCP"}]}],
          f"operator.networkPolicy.dataEndpoints: one egress rule per entry ({egress[2:]})")
    refused({"operator": {"networkPolicy": {"dataEndpoints": [{"cidr": "10.0.0.0/8"}]}}},
            "ports", "a data endpoint without ports")

    classes = {d["metadata"]["name"]: d for d in by_kind(docs, "PriorityClass")}
    pools = [d for d in yaml.safe_load_all((ROOT / "crds/examples/nodepools.yaml").read_text()) if d]
    wanted = {p["spec"]["priorityClassName"] for p in pools if p["spec"].get("priorityClassName")}
    check(wanted and wanted <= set(classes),
          f"defaults: the chart creates the PriorityClasses crds/examples' pools name ({sorted(wanted)} in {sorted(classes)})")
    check(classes.get("atelier-interactive", {}).get("value", 0) > classes.get("atelier-batch", {}).get("value", 0)
          and classes.get("atelier-batch", {}).get("preemptionPolicy") == "Never"
          and not any(c.get("globalDefault") for c in classes.values()),
          "defaults: interactive above batch; batch never preempts; no global default")
    refused({"nodePools": {"gpu": {"purpose": "gpu", "priorityClassName": "atelier-gpu"}}},
            "nodePools.gpu.priorityClassName", "a pool naming a PriorityClass neither created nor external")
    # Helm merges maps: a default is removed by setting it to null.
    docs = check_render({"priorityClasses": {"atelier-interactive": None, "atelier-batch": None},
                         "externalPriorityClasses": ["site-batch"],
                         "nodePools": {"batch": {"purpose": "batch", "priorityClassName": "site-batch"}}},
                        "an external PriorityClass")
    check(not by_kind(docs, "PriorityClass"), "an external PriorityClass: the chart creates none")
    check(find(docs, "ServiceMonitor", "-operator") is None
          and find(render({"operator": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor", "-operator") is None,
          "no ServiceMonitor where the cluster does not serve monitoring.coreos.com/v1, even when enabled")
    for served in (MONITORING[:1], MONITORING[1:]):
        monitor = find(render({"operator": {"serviceMonitor": {"enabled": True}}}, api_versions=served), "ServiceMonitor", "-operator")
        check(monitor is not None, f"a ServiceMonitor where the cluster serves {served[0]}")
    check(find(render({}, api_versions=MONITORING), "ServiceMonitor", "-operator") is None,
          "no ServiceMonitor unless operator.serviceMonitor.enabled")

    for example in sorted((CHART / "examples").glob("*.yaml")):
        docs = check_render(load_values(example), f"examples/{example.name}", api_versions=MONITORING)
        if example.name == "centre.yaml":
            hub = find(docs, "Deployment", "-hub")
            env = {e["name"]: e for e in hub["spec"]["template"]["spec"]["containers"][0]["env"]}
            check(hub["spec"]["replicas"] == 2 and "secretKeyRef" in env["ATELIER_DATABASE_URL"]["valueFrom"],
                  "centre: two hubs on PostgreSQL from a Secret")
            check({d["kind"] for d in docs} >= {"NodePool", "WorkspaceProfile", "DataSource", "Ingress", "ServiceMonitor"},
                  "centre: pools, profiles, data sources, Ingress and ServiceMonitor rendered")
            check({d["metadata"]["name"] for d in by_kind(docs, "NodePool")} == {"interactive", "gpu-trex", "batch"},
                  "centre: interactive, GPU and batch pools")
            monitor = find(docs, "ServiceMonitor", "-operator")
            metrics = find(docs, "Service", "-operator-metrics")
            check(monitor["spec"]["endpoints"][0]["port"] == "metrics" and metrics["spec"]["ports"][0]["port"] == 8080
                  and monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items(),
                  "centre: the ServiceMonitor selects the operator's metrics Service (8080, /metrics)")
            centre = load_values(example)
            check_oidc(docs, centre, "centre")
            check([p["name"] for p in centre["hub"]["oidc"]["providers"]] == ["centre", "egi"]
                  and centre["hub"]["oidc"]["providers"][1]["groupClaims"] == ["eduperson_entitlement"],
                  "centre: the centre's Keycloak and EGI Check-in (eduperson_entitlement groups)")
            text = yaml.safe_dump_all(docs)
            leaked = [v for v in CENTRE_SECRET_VALUES if v in text]
            check(not leaked, f"centre: no client secret value in the rendered manifests ({leaked})")
            check("ATELIER_DEV_LOGIN" not in find(docs, "ConfigMap", "-hub")["data"],
                  "centre: the dev login stays off with OIDC providers")

    variant = {
        "namespaceMode": "per-user",
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}]},
        "hub": {"db": {"type": "postgres", "urlSecret": {"name": "db", "key": "url"}}, "pdb": {"enabled": True}},
        "idleCuller": {"enabled": False},
    }
    docs = check_render({"operator": {"replicas": 1}, "workspaceNamespace": "workspaces"},
                        "one operator, workspaces in their own namespace")
    check_operator_replicas(docs, "one operator", replicas=1)
    refused({"operator": {"replicas": "two"}}, "/operator/replicas", "operator.replicas as a string")

    docs = check_render(variant, "per-user + HTTPRoute + postgres")
    check(find(docs, "HTTPRoute", "-proxy") is not None and not by_kind(docs, "Ingress"), "per-user: HTTPRoute, no Ingress")

    a = render({"proxy": {"refreshMs": 1000}})
    b = render({"proxy": {"refreshMs": 2000}})
    ann = lambda docs: find(docs, "Deployment", "-proxy")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    check(ann(a) != ann(b), "a config change rolls the proxy (checksum/config changes)")
    check(find(render({}), "ConfigMap", "-proxy")["data"].get("ATELIER_PROXY_BUFFER_KIB") == "256"
          and find(render({"proxy": {"bufferKib": 64}}), "ConfigMap", "-proxy")["data"]
          .get("ATELIER_PROXY_BUFFER_KIB") == "64",
          "proxy.bufferKib: the proxy's buffers (--buffer-kib), 256 KiB by default as the binary's")
    refused({"proxy": {"bufferKib": 4}}, "/proxy/bufferKib", "proxy.bufferKib under 8 KiB")

    docs = check_render({"userDomain": "users.example.org"}, "userDomain")
    hub_env, proxy_env, op_env = (find(docs, "ConfigMap", s)["data"]
                                  for s in ("-hub", "-proxy", "-operator"))
    check(hub_env.get("ATELIER_USER_DOMAIN") == "users.example.org"
          and proxy_env.get("ATELIER_USER_DOMAIN") == "users.example.org"
          and op_env.get("ATELIER_USER_DOMAIN") == "users.example.org"
          and proxy_env.get("ATELIER_PUBLIC_URL") == hub_env.get("ATELIER_PUBLIC_URL")
          and op_env.get("ATELIER_PUBLIC_URL") == hub_env.get("ATELIER_PUBLIC_URL"),
          "userDomain: --user-domain on the hub, the proxy and the operator (the servers' OAuth "
          "callbacks), all with the public URL")
    check("ATELIER_USER_DOMAIN" not in find(render({}), "ConfigMap", "-proxy")["data"],
          "defaults: no user domain")
    refused({"userDomain": "https://users.example.org"}, "userDomain", "a userDomain with a scheme")

    # hub.roles: the hub's --roles file (JupyterHub's load_roles list), mounted; the rule.
    roles = [{"name": "dask-users", "description": "Dask Gateway for ocean",
              "scopes": ["access:services!service=dask-gateway"], "groups": ["ocean"]}]
    docs = check_render({"hub": {"roles": roles, "serverNameRule": "dns-label"}}, "hub.roles")
    hub_env = find(docs, "ConfigMap", "-hub")["data"]
    roles_cm = find(docs, "ConfigMap", "-hub-roles")
    hub_dep = find(docs, "Deployment", "-hub")
    pod = hub_dep["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    check(roles_cm is not None and yaml.safe_load(roles_cm["data"]["roles.yaml"]) == roles
          and hub_env.get("ATELIER_ROLES") == mounts.get("roles", "") + "/roles.yaml"
          and volumes.get("roles", {}).get("configMap", {}).get("name") == roles_cm["metadata"]["name"]
          and "checksum/roles" in hub_dep["spec"]["template"]["metadata"]["annotations"]
          and hub_env.get("ATELIER_SERVER_NAME_RULE") == "dns-label",
          "hub.roles: the roles file mounted as the hub's --roles, rolled on change; serverNameRule")
    defaults = render({})
    check(find(defaults, "ConfigMap", "-hub-roles") is None
          and "ATELIER_ROLES" not in find(defaults, "ConfigMap", "-hub")["data"]
          and find(defaults, "ConfigMap", "-hub")["data"].get("ATELIER_SERVER_NAME_RULE") == "jupyterhub",
          "defaults: no roles file, JupyterHub's server name rule")
    refused({"hub": {"roles": [{"scopes": ["read:users"]}]}}, "name", "a role without a name")
    refused({"hub": {"serverNameRule": "anything"}}, "serverNameRule", "an unknown server name rule")

    config, _, _ = hub_oidc(render({}))
    check(config is None and find(render({}), "ConfigMap", "-hub-oidc") is None, "defaults: no OIDC config")
    centre = load_values(CHART / "examples/centre.yaml")
    changed = copy.deepcopy(centre)
    changed["hub"]["oidc"]["providers"][1]["allowedGroups"].append("vo.example.org:role=vm_operator")
    hub_ann = lambda docs: find(docs, "Deployment", "-hub")["spec"]["template"]["metadata"]["annotations"]
    a, b = hub_ann(render(centre)), hub_ann(render(changed))
    check(a["checksum/oidc"] != b["checksum/oidc"] and a["checksum/config"] == b["checksum/config"],
          "an OIDC provider change rolls the hub (checksum/oidc changes)")
    public = {"hub": {"devLogin": True, "oidc": {"providers": [
        {"name": "demo", "issuer": "https://idp.example.org/", "clientId": "atelier-demo"}]}}}
    docs = check_render(public, "OIDC public client + dev login")
    check_oidc(docs, public, "public client")
    check(find(docs, "ConfigMap", "-hub")["data"].get("ATELIER_DEV_LOGIN") == "true"
          and not any(v["name"] == "oidc-secrets" for v in find(docs, "Deployment", "-hub")["spec"]["template"]["spec"]["volumes"]),
          "public client: hub.devLogin keeps the dev login next to OIDC; no secret volume")

    def oidc(**changes):
        provider = {"name": "centre", "issuer": "https://sso.example.org/realms/vre", "clientId": "atelier"}
        provider.update(changes)
        return {"hub": {"oidc": {"providers": [{k: v for k, v in provider.items() if v is not None}]}}}
    refused(oidc(issuer=None), "issuer", "an OIDC provider without issuer")
    refused(oidc(clientId=None), "clientId", "an OIDC provider without clientId")
    refused(oidc(isuer="https://x.example.org"), "isuer", "a typo in an OIDC provider (isuer)")
    refused(oidc(issuer="http://sso.example.org"), "issuer", "a plain-http OIDC issuer")
    refused(oidc(name="Centre SSO"), "name", "an OIDC provider name outside a-z, 0-9, -")
    refused(oidc(clientSecret="s3cr3t-inline"), "clientSecret", "an inline client secret")
    refused(oidc(clientSecret={"existingSecret": "s", "key": "k", "value": "s3cr3t"}), "value",
            "a client secret value next to its Secret reference")
    refused(oidc(clientSecret={"existingSecret": "s"}), "key", "a client Secret without its key")
    twice = oidc()
    twice["hub"]["oidc"]["providers"] *= 2
    refused(twice, "used twice", "two OIDC providers with one name")
    refused({"hub": {"replicaz": 2}}, "replicaz", "a typo (hub.replicaz)")
    refused({"proxy": {"replicas": "two"}}, "replicas", "a wrong type (proxy.replicas: \"two\")")
    refused({"namespaceMode": "per-group"}, "namespaceMode", "an unknown namespaceMode")
    refused({"ingress": {"enabled": True}, "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
            "httpRoute.enabled", "both an Ingress and an HTTPRoute")
    refused({"hub": {"db": {"type": "postgres"}}}, "hub.db.urlSecret.name", "PostgreSQL without its URL Secret")
    check_crds_identical()

    print(f"\n{len(failures)} failure(s)")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", metavar="VALUES", help="render and validate one values file only")
    parser.add_argument("--name", default="atelier")
    parser.add_argument("--namespace", default="atelier")
    parser.add_argument("--out", help="write the rendered objects here (YAML stream)")
    parser.add_argument("--rbac-table", metavar="JSON",
                        help="the API calls of src/rbac.rs (tests/chart.rs writes it); RBAC is checked against it")
    parser.add_argument("--objects", metavar="JSON", nargs="+",
                        help="only validate these golden objects (JSON arrays) against Kubernetes' schemas")
    args = parser.parse_args()
    global RBAC_TABLE
    if args.rbac_table:
        with open(args.rbac_table) as f:
            RBAC_TABLE = json.load(f)
    if args.objects:
        check_builder_objects([Path(p) for p in args.objects])
        print(f"\n{len(failures)} failure(s)")
        return 1 if failures else 0
    if not args.render:
        return main_all()
    docs = check_render(load_values(args.render), os.path.basename(args.render), args.name, args.namespace)
    if args.out:
        with open(args.out, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    print(f"\n{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
