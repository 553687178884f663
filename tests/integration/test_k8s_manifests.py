"""The Kubernetes manifests in k8s/: every resource of every kustomization, validated.

* kustomize's output is rebuilt here (resources, namespace and JSON 6902 patches: the
  only kustomize features k8s/ uses; anything else fails the test, so the rebuild
  never silently differs from ``kubectl apply -k``);
* core kinds (Namespace, PersistentVolumeClaim, Secret, NetworkPolicy, and the Service
  and pod templates inside the RayService) against Kubernetes' own schemas, strictly
  (``kubernetes-validate``: unknown fields fail);
* the custom resources (RayService, PodMonitor, ServiceMonitor) structurally: known
  fields only, the required ones present, and how they fit together;
* the control plane locked down: Ray's token authentication on in every Ray container
  (the token from a Secret), a NetworkPolicy that admits only the Serve port from outside
  the cluster's pods, and the ServiceMonitor sending a bearer key from a Secret;
* ``serveConfigV2`` with Ray Serve's own config schema (``ServeDeploySchema``) and
  kronk's settings, and generated from serve_config.yaml (``--check`` fails on drift).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deployments.ray_env import RAY_ENV

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu"]
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are checked against ...
K8S_VERSIONS = [K8S_VERSION, kubernetes_validate.utils.latest_version()]  # ... and the newest known
CORE_KINDS = {"Namespace", "PersistentVolumeClaim", "Secret", "NetworkPolicy", "Service", "PodTemplate"}
IMAGE = "ghcr.io/kronk-ai/kronk"
HF_SECRET, RAY_SECRET, KEYS_SECRET = "kronk-hf-token", "kronk-ray-token", "kronk-api-keys"
SERVE_PORT = 8000
# the ports the NetworkPolicy opens, beyond the Serve port, to named pods outside the cluster: the KubeRay
# operator deploys serveConfigV2 through the dashboard; Prometheus scrapes Ray's metrics (podmonitor.yaml)
OUTSIDE_EXCEPTIONS = {(("app.kubernetes.io/name", "kuberay-operator"),): {8265},
                      (("app.kubernetes.io/name", "prometheus"),): {8080, 44217, 44227}}


def _gen():
    spec = importlib.util.spec_from_file_location("gen_rayservice", ROOT / "scripts" / "gen_rayservice.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _gen()


# ---------------------------------------------------------------------------- kustomize, the part k8s/ uses

def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / remove / replace / test (what kustomize applies for a JSON patch)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        kind = op["op"]
        if isinstance(node, list):
            idx = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(idx, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del node[idx]
            elif kind == "replace":
                node[idx] = copy.deepcopy(op["value"])
            elif kind == "test":
                assert node[idx] == op["value"], f"patch test failed at {op['path']}: {node[idx]!r}"
            else:
                raise AssertionError(f"unsupported patch op {kind}")
        else:
            if kind in ("remove", "replace", "test"):
                assert last in node, f"{op['path']} does not exist"
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            elif kind == "test":
                assert node[last] == op["value"], f"patch test failed at {op['path']}: {node[last]!r}"
            else:
                raise AssertionError(f"unsupported patch op {kind}")
    return doc


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return all(
        want == {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"]}[key]
        for key, want in target.items()
    )


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize folder`` outputs, for the features k8s/ uses."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(k) - {"apiVersion", "kind", "namespace", "resources", "patches"}
    assert not unsupported, f"{folder}: this test does not model kustomize's {sorted(unsupported)}"
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            docs += kustomize(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for p in k.get("patches", []):
        assert set(p) <= {"target", "path", "patch"} and ("path" in p) != ("patch" in p), p
        assert set(p["target"]) <= {"group", "version", "kind", "name"}, p["target"]
        ops = yaml.safe_load((folder / p["path"]).read_text() if "path" in p else p["patch"])
        assert isinstance(ops, list), f"{folder}: only JSON 6902 patches are modelled here"
        hits = [i for i, d in enumerate(docs) if _matches(d, p["target"])]
        assert hits, f"{folder}: patch target {p['target']} matches nothing"
        for i in hits:
            docs[i] = json_patch(docs[i], ops)
    if "namespace" in k:
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def referenced_files(folder: Path) -> set[Path]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    out = {folder / "kustomization.yaml"}
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        out |= referenced_files(path) if path.is_dir() else {path}
    out |= {(folder / p["path"]).resolve() for p in k.get("patches", []) if "path" in p}
    return out


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / request.param)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def groups(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod groups of the RayService: "head" and each worker group by name."""
    cfg = rs["spec"]["rayClusterConfig"]
    return {"head": cfg["headGroupSpec"], **{g["groupName"]: g for g in cfg.get("workerGroupSpecs", [])}}


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay runs Ray in the first container


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def secret_ref(env: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The secretKeyRef env var ``name`` takes its value from (and never a literal value)."""
    assert name in env, f"no {name}"
    assert "value" not in env[name], f"{name} must come from a Secret, not a literal"
    return env[name]["valueFrom"]["secretKeyRef"]


# ---------------------------------------------------------------------------- structure of the CRDs

_OBJ = {"type": "object"}
_META = {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_GROUP_COMMON = {"rayStartParams": _STR_MAP, "template": {"type": "object", "required": ["spec"]},
                 "resources": _STR_MAP, "labels": _STR_MAP}
RAYSERVICE_SCHEMA = {
    # Field names and types from KubeRay's ray.io/v1 Go types (rayservice_types.go,
    # raycluster_types.go). Unknown fields fail here because the API server would
    # silently drop them (the CRD prunes what it does not know).
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "required": ["rayClusterConfig", "serveConfigV2"],
            "additionalProperties": False,
            "properties": {
                "rayClusterDeletionDelaySeconds": {"type": "integer", "minimum": 0},
                "serveService": {"type": "object", "required": ["spec"]},
                "upgradeStrategy": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                                   "clusterUpgradeOptions": _OBJ}},
                "serveConfigV2": {"type": "string", "minLength": 1},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec", "rayVersion"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"version": {"enum": ["v1", "v2"]},
                                           "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                                           "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                                           "resources": _OBJ, "image": {"type": "string"},
                                           "imagePullPolicy": {"type": "string"}, "env": {"type": "array"},
                                           "envFrom": {"type": "array"}, "volumeMounts": {"type": "array"},
                                           "securityContext": _OBJ}},
                        "headServiceAnnotations": _STR_MAP,
                        "authOptions": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"mode": {"enum": ["disabled", "token"]},
                                           "secretName": {"type": "string", "minLength": 1},
                                           "enableK8sTokenAuth": {"type": "boolean"}}},
                        "headGroupSpec": {
                            "type": "object", "required": ["template"], "additionalProperties": False,
                            "properties": {**_GROUP_COMMON, "serviceType": {"type": "string"},
                                           "headService": _OBJ, "enableIngress": {"type": "boolean"}}},
                        "workerGroupSpecs": {
                            "type": "array", "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["groupName", "minReplicas", "maxReplicas", "template"],
                                "additionalProperties": False,
                                "properties": {
                                    **_GROUP_COMMON,
                                    "groupName": {"type": "string", "minLength": 1},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                                    "numOfHosts": {"type": "integer", "minimum": 1},
                                    "scaleStrategy": _OBJ, "suspend": {"type": "boolean"}}}},
                    },
                },
            },
        },
    },
}
MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"enum": ["PodMonitor", "ServiceMonitor"]},
        "metadata": _META,
        "spec": {
            "type": "object", "required": ["selector"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": _STR_MAP}},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/endpoint"}},
                "endpoints": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/endpoint"}},
            },
        },
    },
    "$defs": {"endpoint": {
        "type": "object", "required": ["port"], "additionalProperties": False,
        "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                       "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                       "authorization": {
                           "type": "object", "required": ["credentials"], "additionalProperties": False,
                           "properties": {"type": {"type": "string"}, "credentials": {
                               "type": "object", "required": ["name", "key"], "additionalProperties": False,
                               "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                              "optional": {"type": "boolean"}}}}},
                       "relabelings": {"type": "array", "items": {
                           "type": "object", "additionalProperties": False,
                           "properties": {"sourceLabels": {"type": "array"}, "targetLabel": {"type": "string"},
                                          "action": {"type": "string"}, "regex": {"type": "string"},
                                          "replacement": {"type": "string"}}}}}}},
}


# ---------------------------------------------------------------------------- tests

def test_every_manifest_file_belongs_to_a_kustomization() -> None:
    used = set().union(*(referenced_files(K8S / k) for k in KUSTOMIZATIONS))
    others = {K8S / "serve-profiles.yaml"}
    yamls = {p.resolve() for p in K8S.rglob("*.yaml") if "dashboards" not in p.parts}
    assert yamls - used - others == set(), "manifests no kustomization uses"
    for path in yamls:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc is not None or path.name.endswith(".patch.yaml"), f"empty document in {path}"


def test_kustomizations_render_the_expected_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Namespace", "PersistentVolumeClaim", "Secret", "Secret", "Secret", "RayService", "NetworkPolicy",
         "PodMonitor", "ServiceMonitor"])
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "kronk", d["kind"]
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == "kronk"
        else:
            assert d["metadata"]["namespace"] == "kronk", d["kind"]
    names = list(groups(one(docs, "RayService")))
    assert names == {"base": ["head", "cpu", "gpu"], "overlays/cpu": ["head", "cpu"],
                     "overlays/gpu": ["head", "cpu", "gpu"]}[name]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_validate_against_the_kubernetes_schema(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    _, docs = rendered
    core = [d for d in docs if d["kind"] in CORE_KINDS]
    rs = one(docs, "RayService")
    ns = rs["metadata"]["namespace"]
    # what KubeRay makes from the RayService: the serve Service and each group's pods
    core.append({"apiVersion": "v1", "kind": "Service", **rs["spec"]["serveService"],
                 "metadata": {**rs["spec"]["serveService"]["metadata"], "namespace": ns}})
    for gname, g in groups(rs).items():
        core.append({"apiVersion": "v1", "kind": "PodTemplate",
                     "metadata": {"name": f"kronk-{gname}", "namespace": ns}, "template": g["template"]})
    assert {d["kind"] for d in core} == CORE_KINDS
    for d in core:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{d['kind']} {d['metadata']['name']} is not valid Kubernetes {version}: "
                        f"{e.message} at {'/'.join(map(str, e.path))}")


def test_custom_resources_are_well_formed(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    jsonschema.validate(one(docs, "RayService"), RAYSERVICE_SCHEMA)
    for kind in ("PodMonitor", "ServiceMonitor"):
        jsonschema.validate(one(docs, kind), MONITOR_SCHEMA)


def test_ray_cluster_head_cpu_and_gpu_groups(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    rs = one(docs, "RayService")
    cfg = rs["spec"]["rayClusterConfig"]
    assert cfg["enableInTreeAutoscaling"] is True
    dockerfile = (K8S / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(cfg['rayVersion'])}$", dockerfile, re.M), \
        "rayVersion must be the Ray the image installs"
    gs = groups(rs)
    for gname, g in gs.items():
        c = ray_container(g)
        limits = c["resources"]["limits"]
        assert c["resources"]["requests"].get("nvidia.com/gpu") == limits.get("nvidia.com/gpu")
        if gname == "gpu":
            assert int(limits["nvidia.com/gpu"]) >= 1 and c["image"] == f"{IMAGE}:latest-cuda"
            tolerations = g["template"]["spec"]["tolerations"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
            assert "gpu_node" in g["rayStartParams"]["resources"]
        else:
            assert "nvidia.com/gpu" not in limits and c["image"] == f"{IMAGE}:latest"
        if gname != "head":
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
    assert gs["head"]["rayStartParams"]["num-cpus"] == "0"  # no model replicas on the head
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(gs["head"])["ports"]}
    assert head_ports["serve"] == 8000 and head_ports["metrics"] == 8080
    assert head_ports["dashboard"] == 8265 and head_ports["gcs"] == 6379
    if name == "overlays/gpu":
        assert gs["gpu"]["minReplicas"] >= 1


def test_every_pod_mounts_the_shared_models_volume_and_gets_the_token(
    rendered: tuple[str, list[dict[str, Any]]]
) -> None:
    _, docs = rendered
    pvc = one(docs, "PersistentVolumeClaim")
    secret = named(docs, "Secret", HF_SECRET)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "data" not in secret and "stringData" not in secret  # applying never overwrites a token set by hand
    for gname, g in groups(one(docs, "RayService")).items():
        spec = g["template"]["spec"]
        c = ray_container(g)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], gname
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", gname
        env = {e["name"]: e for e in c["env"]}
        assert env["KRONK_MODELS_DIR"]["value"] == "/models", gname
        ref = env["KRONK_HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "token", "optional": True}, gname
        assert "value" not in env["KRONK_HF_TOKEN"]
        # the same Ray settings `kronk server start` applies locally
        assert {k: env[k]["value"] for k in RAY_ENV if k in env} == RAY_ENV, gname
        assert "ports" in c and any(p["name"] == "metrics" and p["containerPort"] == 8080 for p in c["ports"])


def test_service_and_monitors_select_what_exists(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    rs = one(docs, "RayService")
    svc = rs["spec"]["serveService"]
    assert svc["metadata"]["name"] == "kronk" and "selector" not in svc["spec"]  # KubeRay sets the selector
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"serve": 8000}

    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}

    pm = one(docs, "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"].items()
    pod_ports: set[str] = set()
    for gname, g in groups(rs).items():
        assert selector <= g["template"]["metadata"]["labels"].items(), f"the PodMonitor misses the {gname} pods"
        pod_ports |= {p["name"] for p in ray_container(g)["ports"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= pod_ports


# ---------------------------------------------------------------------------- the control plane (docs/security.md)

def test_ray_token_authentication_is_on_in_every_ray_container(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    secret = named(docs, "Secret", RAY_SECRET)
    assert "data" not in secret and "stringData" not in secret  # never a token in git, never overwritten
    cfg = one(docs, "RayService")["spec"]["rayClusterConfig"]
    # KubeRay (1.6+) reads the token from this Secret to talk to the dashboard (deploying serveConfigV2)
    assert cfg["authOptions"] == {"mode": "token", "secretName": RAY_SECRET}
    major, minor, _ = (int(x) for x in cfg["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "Ray's token authentication needs Ray 2.52 or newer"
    containers = {"autoscaler": cfg["autoscalerOptions"]}
    for gname, g in groups(one(docs, "RayService")).items():
        for c in g["template"]["spec"]["containers"] + g["template"]["spec"].get("initContainers", []):
            containers[f"{gname}/{c['name']}"] = c
    for where, c in containers.items():
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        # required: a pod without the Secret does not start, rather than run a Ray without the token
        assert secret_ref(env, "RAY_AUTH_TOKEN") == {"name": RAY_SECRET, "key": "auth_token"}, where
        assert "RAY_AUTH_TOKEN_PATH" not in env, where


def _outside_rules(policy: dict[str, Any], own: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ingress rules of ``policy`` that admit anything besides pods of this namespace carrying ``own``."""
    def own_pods(peer: dict[str, Any]) -> bool:
        labels = set((peer.get("podSelector") or {}).get("matchLabels", {}).items())
        return set(peer) == {"podSelector"} and bool(labels) and labels <= own and "matchExpressions" not in \
            peer["podSelector"]
    return [r for r in policy["spec"].get("ingress", []) if not r.get("from") or not all(map(own_pods, r["from"]))]


def test_network_policy_admits_only_the_serve_port_from_outside_the_cluster(
    rendered: tuple[str, list[dict[str, Any]]]
) -> None:
    _, docs = rendered
    policy = named(docs, "NetworkPolicy", "kronk-ray")
    rs = one(docs, "RayService")
    assert "Ingress" in policy["spec"]["policyTypes"]
    selector = set(policy["spec"]["podSelector"]["matchLabels"].items())
    assert selector and "matchExpressions" not in policy["spec"]["podSelector"]
    labels = {g: set(spec["template"]["metadata"]["labels"].items()) for g, spec in groups(rs).items()}
    for gname, have in labels.items():
        assert selector <= have, f"the NetworkPolicy does not select the {gname} pods"
    own = set.intersection(*labels.values())  # what every pod of the cluster carries
    # Ray between the cluster's own pods: every port
    assert any(not r.get("ports") and r.get("from") and r not in _outside_rules(policy, own)
               for r in policy["spec"]["ingress"]), "Ray's traffic between the cluster's pods must stay allowed"
    svc_ports = {p["targetPort"] for p in rs["spec"]["serveService"]["spec"]["ports"]}
    assert svc_ports == {SERVE_PORT}
    open_to_all: set[int] = set()
    for rule in _outside_rules(policy, own):
        assert rule.get("ports"), f"a rule admits every port from outside the cluster: {rule}"
        ports = {p["port"] for p in rule["ports"]}
        assert all(p.get("protocol", "TCP") == "TCP" and isinstance(p["port"], int) and "endPort" not in p
                   for p in rule["ports"]), rule
        peers = rule.get("from") or []
        if not peers or any("ipBlock" in p or not (p.get("podSelector") or {}).get("matchLabels") for p in peers):
            open_to_all |= ports  # any pod, any address
            continue
        for peer in peers:  # named pods elsewhere: only the exceptions, each to its own ports
            key = tuple(sorted(peer["podSelector"]["matchLabels"].items()))
            assert key in OUTSIDE_EXCEPTIONS, f"the NetworkPolicy admits unexpected pods: {peer}"
            assert ports <= OUTSIDE_EXCEPTIONS[key], f"{key} may reach {sorted(ports)}"
    assert open_to_all == {SERVE_PORT}, f"open to anyone: {sorted(open_to_all)} (only the Serve port may be)"
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(groups(rs)["head"])["ports"]}
    for name in ("gcs", "client"):  # the GCS and the Ray Client server: never from outside the cluster
        assert all(head_ports[name] not in {p["port"] for p in r["ports"]} for r in _outside_rules(policy, own))


def test_service_monitor_sends_a_bearer_key_from_a_secret(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    keys = named(docs, "Secret", KEYS_SECRET)
    assert "data" not in keys and "stringData" not in keys
    [endpoint] = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert auth["credentials"] == {"name": KEYS_SECRET, "key": "metrics"}
    assert not {"bearerTokenFile", "bearerTokenSecret", "basicAuth", "params"} & set(endpoint)
    for gname, g in groups(one(docs, "RayService")).items():  # the key Prometheus sends is one kronk accepts
        env = {e["name"]: e for e in ray_container(g)["env"]}
        assert secret_ref(env, "KRONK_API_KEYS") == {"name": KEYS_SECRET, "key": "api_keys", "optional": True}, \
            gname


def _serve_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def test_serve_config_v2_is_a_valid_serve_config(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    _, docs = rendered
    schema = ServeDeploySchema.parse_obj(_serve_config(docs))
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    assert schema.proxy_location == "EveryNode"
    [app] = schema.applications
    assert app.import_path == "deployments.app:build_app" and app.route_prefix == "/"


def test_serve_config_v2_builds_kronk_and_every_replica_fits_a_worker(
    rendered: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from deployments.app import build_app
    from deployments.llm import deployment_options
    from kronk.settings import load_settings

    name, docs = rendered
    for var in ("KRONK_CONFIG", "KRONK_MODELS", "KRONK_NUM_GPUS", "KRONK_NUM_CPUS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KRONK_HOME", str(tmp_path))  # no config file from this machine's home
    monkeypatch.setenv("KRONK_MODELS_DIR", "/models")  # as on the pods
    [app] = _serve_config(docs)["applications"]
    build_app(app["args"])  # what the Serve controller runs
    settings = load_settings(app["args"])
    assert str(settings.models_path) == "/models"
    workers = {g: ray_container(spec)["resources"]["limits"]
               for g, spec in groups(one(docs, "RayService")).items() if g != "head"}
    for m in settings.models:
        opts = deployment_options(settings.resolved_model(m))
        actor = opts["ray_actor_options"]
        fits = [g for g, lim in workers.items() if float(lim["cpu"]) >= actor["num_cpus"]
                and int(lim.get("nvidia.com/gpu", 0)) >= actor.get("num_gpus", 0)]
        assert fits, f"{m.name}: a replica ({actor}) fits no worker group ({workers})"
        if name == "overlays/gpu":
            assert actor["num_gpus"] >= 1 and fits == ["gpu"]
        else:
            assert not actor.get("num_gpus") and "cpu" in fits
        assert "autoscaling_config" in opts  # per-model autoscaling on the cluster


def test_serve_config_v2_is_generated_from_serve_config() -> None:
    assert gen.stale(ROOT) == [], "run `python scripts/gen_rayservice.py`"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_rayservice.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    [app] = [a for a in local["applications"] if a["name"] == "kronk"]
    for kdir in KUSTOMIZATIONS:
        [k8s_app] = _serve_config(kustomize(K8S / kdir))["applications"]
        assert [m["name"] for m in k8s_app["args"]["models"]] == [
            m if isinstance(m, str) else m["name"] for m in app["args"]["models"]]
        for mine, theirs in zip(app["args"]["models"], k8s_app["args"]["models"], strict=True):
            profile_keys = set().union(*(set(p.get("models") or {}) for p in gen.load_profiles(ROOT).values()))
            for key, value in mine.items():
                assert key in profile_keys or theirs[key] == value, f"{kdir}: {key} differs from serve_config.yaml"


def test_check_fails_when_serve_config_drifts_and_regenerating_fixes_it(tmp_path: Path) -> None:
    shutil.copy(ROOT / "serve_config.yaml", tmp_path / "serve_config.yaml")
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("Dockerfile*", "dashboards"))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0

    cfg = (tmp_path / "serve_config.yaml").read_text()
    assert "ctx_size: 8192" in cfg
    (tmp_path / "serve_config.yaml").write_text(cfg.replace("ctx_size: 8192", "ctx_size: 4096"))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1
    assert {p.relative_to(tmp_path) for p in gen.stale(tmp_path)} == {
        Path("k8s/base/rayservice.yaml"), Path("k8s/overlays/gpu/serve-config.patch.yaml")}

    before = (tmp_path / "k8s/base/rayservice.yaml").read_text()
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0
    after = (tmp_path / "k8s/base/rayservice.yaml").read_text()
    # only the serveConfigV2 block changed, and it says the new value
    changed = [(a.strip(), b.strip()) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("ctx_size: 8192", "ctx_size: 4096")]
    for kdir in KUSTOMIZATIONS:
        [app] = _serve_config(kustomize(tmp_path / "k8s" / kdir))["applications"]
        assert app["args"]["models"][0]["ctx_size"] == 4096

    # a profile field that is not a kronk model setting is refused
    profiles = (tmp_path / "k8s/serve-profiles.yaml").read_text()
    (tmp_path / "k8s/serve-profiles.yaml").write_text(profiles.replace("threads: 2", "thread: 2", 1))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 2


def test_dockerfile_builds_the_image_the_manifests_use() -> None:
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert "scripts/install_llama.sh" in text and "build-essential" in text and "cmake" in text
    assert "-DGGML_NATIVE=OFF" in text and "-DGGML_CUDA=ON" in text and re.search(r"^ARG CUDA=", text, re.M)
    assert re.search(r"apt-get install .*\bwget\b", text)  # KubeRay's probes use wget
    ignore = (K8S / "Dockerfile.dockerignore").read_text().split()
    assert "**/.venv" in ignore
