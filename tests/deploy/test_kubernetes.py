"""deploy/kubernetes: the base and every overlay render, every object is valid against the
Kubernetes schemas, the RBAC grants exactly what the autoscaler needs, the autoscaler's Deployment
has the settings the design asks for, and each overlay's policies and workload Deployments agree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.config import load_config
from autoscaler.engine.types import NodeClass, PoolSpec
from autoscaler.kube.nodes import DEFAULT_GPU_TYPE_LABEL, VIRTUAL_KUBELET_PROVIDER, normalise_gpu_type
from autoscaler.settings import Settings
from tests.deploy.conftest import KUBERNETES_VERSION, KUSTOMIZE, OVERLAYS, ROOT, TREES, by_kind, need, render

NAMESPACE = "gpu-autoscaler"
POLICY_DIR = "/etc/gpu-autoscaler/policies"

# Everything the autoscaler may do, and nothing more (the issue's list): (apiGroup, resource) -> verbs.
CLUSTER_GRANTS = {
    ("apps", "deployments"): {"get", "list", "watch"},
    ("apps", "deployments/scale"): {"get", "update", "patch"},
    ("", "pods"): {"list", "watch", "patch"},  # patch: pod-deletion-cost, for idle-first scale-in
    ("", "nodes"): {"list", "watch"},
    ("", "events"): {"create", "patch"},
}
# The Lease: read and renewed by name only (the Settings' lease_name); `create` cannot be limited by
# resourceNames (RBAC sees no name on a create), so it stays a rule of its own, in this namespace.
LEASE_NAME = Settings().lease_name
NAMESPACE_GRANTS = {
    ("coordination.k8s.io", "leases", LEASE_NAME): {"get", "update"},
    ("coordination.k8s.io", "leases", None): {"create"},
}


def test_the_expected_overlays_exist() -> None:
    assert set(OVERLAYS) == {"salad", "acs", "vks"}
    assert {p.name for p in (ROOT / "policies").iterdir() if p.is_dir()} == set(OVERLAYS)


@pytest.mark.parametrize("tree", TREES)
def test_every_object_is_valid_against_the_kubernetes_schemas(tree: str) -> None:
    import kubernetes_validate

    objects = render(tree)
    assert objects
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_service_monitor(obj, objects)  # a CRD: no schema bundled, checked by hand
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{tree}: {name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def check_service_monitor(monitor: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """The parts of the ServiceMonitor CRD's schema we use, and that it finds the metrics Service."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = spec["selector"]["matchLabels"]
    services = [
        s
        for s in by_kind(objects, "Service")
        if s["metadata"]["namespace"] == NAMESPACE and selector.items() <= s["metadata"]["labels"].items()
    ]
    assert len(services) == 1, "the ServiceMonitor must select exactly the metrics Service"
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def grants(rules: Iterable[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def named_grants(rules: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str | None], set[str]]:
    """(apiGroup, resource, resourceName or None for any) -> verbs."""
    out: dict[tuple[str, str, str | None], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    out.setdefault((group, resource, name), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("tree", TREES)
def test_rbac_grants_nothing_beyond_what_the_autoscaler_needs(tree: str) -> None:
    objects = render(tree)
    cluster_roles = by_kind(objects, "ClusterRole")
    roles = by_kind(objects, "Role")
    assert len(cluster_roles) == 1 and len(roles) == 1, "one ClusterRole and one Role, nothing else"
    assert grants(cluster_roles[0]["rules"]) == CLUSTER_GRANTS
    assert named_grants(roles[0]["rules"]) == NAMESPACE_GRANTS
    assert roles[0]["metadata"]["namespace"] == NAMESPACE  # Leases in its own namespace only
    for rules in (cluster_roles[0]["rules"], roles[0]["rules"]):
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]

    account = by_kind(objects, "ServiceAccount")[0]["metadata"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    (cluster_binding,) = by_kind(objects, "ClusterRoleBinding")
    (binding,) = by_kind(objects, "RoleBinding")
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_roles[0]["metadata"]["name"],
    }
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert cluster_binding["subjects"] == [subject] and binding["subjects"] == [subject]


def autoscaler_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["namespace"] == NAMESPACE]
    return deployment


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("tree", TREES)
def test_the_autoscaler_deployment(tree: str) -> None:
    objects = render(tree)
    deployment = autoscaler_deployment(objects)
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)

    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == by_kind(objects, "ServiceAccount")[0]["metadata"]["name"]
    # Leader election, identity from the Downward API.
    assert env["AUTOSCALER_LEADER_ELECTION"]["value"] == "true"
    assert env["AUTOSCALER_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["AUTOSCALER_POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Secrets by reference only, optional so a cluster without one of the sources still starts.
    for name in ("RABBITMQ_URL", "PROMETHEUS_TOKEN"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True and ref["name"] and ref["key"]
    assert all("value" not in e for n, e in env.items() if not n.startswith("AUTOSCALER_"))
    # The settings the environment gives are valid settings.
    settings = Settings(
        **{n.removeprefix("AUTOSCALER_").lower(): e["value"] for n, e in env.items() if "value" in e}
    )
    assert str(settings.policy_dir) == POLICY_DIR
    # The Role grants get/update on this Lease name only.
    assert settings.lease_name == LEASE_NAME
    # Probes and the metrics port agree with the settings and the Service.
    (port,) = container["ports"]
    assert port["containerPort"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    # Locked down.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # The policies: the generated ConfigMap, mounted as a directory (subPath mounts never update,
    # and the hot reload needs the kubelet to update the files).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts[POLICY_DIR] and mounts[POLICY_DIR]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = volumes[mounts[POLICY_DIR]["name"]]["configMap"]["name"]
    assert config_map in {c["metadata"]["name"] for c in by_kind(objects, "ConfigMap")}
    assert "/tmp" in mounts  # the only writable path


@pytest.mark.parametrize("tree", TREES)
def test_the_deployed_policies_validate(tree: str, tmp_path: Path) -> None:
    """The ConfigMap's files, with the cluster name the Deployment sets, pass `autoscaler validate`."""
    objects = render(tree)
    (config_map,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["namespace"] == NAMESPACE]
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    env = env_of(autoscaler_deployment(objects)["spec"]["template"]["spec"]["containers"][0])
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler", "validate", str(tmp_path)],
        env={"AUTOSCALER_CLUSTER_NAME": env["AUTOSCALER_CLUSTER_NAME"]["value"], "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("folder", sorted(p.name for p in (ROOT / "policies").iterdir() if p.is_dir()))
def test_every_policy_folder_passes_autoscaler_validate(folder: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler", "validate", str(ROOT / "policies" / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_ships_the_repository_policies_unchanged(overlay: str) -> None:
    source = {p.name: p.read_text() for p in sorted((ROOT / "policies" / overlay).glob("*.y*ml"))}
    copy = {
        p.name: p.read_text() for p in sorted((KUSTOMIZE / "overlays" / overlay / "policies").glob("*.y*ml"))
    }
    assert copy == source, (
        f"deploy/kubernetes/overlays/{overlay}/policies/ differs from policies/{overlay}/: "
        f"cp policies/{overlay}/*.yaml deploy/kubernetes/overlays/{overlay}/policies/ "
        "(and list new files in the overlay's configMapGenerator)"
    )
    (config_map,) = by_kind(render(f"overlays/{overlay}"), "ConfigMap")
    assert set(config_map["data"]) == set(source)


def pools_of(overlay: str) -> dict[tuple[str, str], PoolSpec]:
    loaded = load_config([ROOT / "policies" / overlay])
    assert not loaded.errors, loaded.errors
    return {(p.namespace, p.deployment): p for w in loaded.workloads for p in w.pools}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_has_exactly_the_deployments_its_policies_scale(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    workloads = [d for d in by_kind(objects, "Deployment") if d["metadata"]["namespace"] != NAMESPACE]
    pools = pools_of(overlay)
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in workloads} == set(pools)
    namespaces = {n["metadata"]["name"] for n in by_kind(objects, "Namespace")}
    assert {ns for ns, _ in pools} <= namespaces
    env = env_of(autoscaler_deployment(objects)["spec"]["template"]["spec"]["containers"][0])
    assert set(env["AUTOSCALER_NAMESPACES"]["value"].split(",")) == {ns for ns, _ in pools}
    for d in workloads:
        check_pool_placement(d, pools[(d["metadata"]["namespace"], d["metadata"]["name"])])


def check_pool_placement(deployment: dict[str, Any], pool: PoolSpec) -> None:
    """The pod template lands where the pool says: regular pools on nodes of their GPU type,
    virtual pools on their provider's virtual nodes; and asks for the pool's GPUs per replica."""
    name = deployment["metadata"]["name"]
    # The autoscaler owns replicas: a manifest that set them would undo it on every apply.
    assert "replicas" not in deployment["spec"], name
    template = deployment["spec"]["template"]
    pod = template["spec"]
    labels = template["metadata"]["labels"]
    selector = pod.get("nodeSelector", {})
    tolerations = pod.get("tolerations", [])
    if pool.provider != "salad":
        for container in pod["containers"]:
            resources = container["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == str(pool.gpus_per_replica), name
            assert resources["requests"]["nvidia.com/gpu"] == str(pool.gpus_per_replica), name
    if pool.node_class is NodeClass.REGULAR:
        assert normalise_gpu_type(selector[DEFAULT_GPU_TYPE_LABEL]) == pool.gpu_type, name
        assert not any(t["key"] == VIRTUAL_KUBELET_PROVIDER for t in tolerations), name
    elif pool.provider == "salad":
        check_salad_pod(name, template)
    elif pool.provider == "acs":
        assert labels["alibabacloud.com/acs"] == "true", name
        assert labels["alibabacloud.com/compute-class"] in {"gpu", "gpu-hpn"}, name
        assert labels["alibabacloud.com/gpu-model-series"] == pool.gpu_type, name
    else:
        pytest.fail(f"{name}: no placement rule for provider {pool.provider}")


def metrics_policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    deployment = autoscaler_deployment(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    return [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if p["metadata"]["namespace"] == NAMESPACE
        and p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]


@pytest.mark.parametrize("tree", TREES)
def test_only_prometheus_may_reach_the_metrics_port(tree: str) -> None:
    """A NetworkPolicy selects the autoscaler's pods for Ingress, so everything not allowed is denied,
    and allows one thing: the metrics port, from Prometheus pods in the monitoring namespace."""
    objects = render(tree)
    (policy,) = metrics_policies(objects)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]  # egress (API server, brokers, Prometheus) stays open
    (rule,) = spec["ingress"]
    (port_name,) = [
        p["name"]
        for p in autoscaler_deployment(objects)["spec"]["template"]["spec"]["containers"][0]["ports"]
    ]
    assert rule["ports"] == [{"port": port_name, "protocol": "TCP"}]
    (peer,) = rule["from"]
    # Both selectors in one peer: Prometheus pods AND in the monitoring namespace, not either.
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}


def test_an_overlay_can_point_the_metrics_policy_at_its_prometheus(tmp_path: Path) -> None:
    """What the README tells an operator whose Prometheus runs elsewhere: one patch in the overlay."""
    kubectl = need("kubectl", "the machine image ships it")
    (tmp_path / "kustomization.yaml").write_text(
        f"""
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [{os.path.relpath(KUSTOMIZE / "base", tmp_path)}]  # kustomize takes no absolute path
patches:
  - target: {{kind: NetworkPolicy, name: gpu-autoscaler-metrics}}
    patch: |
      - op: replace
        path: /spec/ingress/0/from/0
        value:
          namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: observability}}}}
          podSelector: {{matchLabels: {{app: vmagent}}}}
"""
    )
    done = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    (policy,) = metrics_policies([d for d in yaml.safe_load_all(done.stdout) if d])
    (peer,) = policy["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "observability"}
    assert peer["podSelector"]["matchLabels"] == {"app": "vmagent"}


# The SaladCloud virtual node as its provider registers it (REFERENCE.md, "Virtual nodes"; the
# provider's code and the virtual-kubelet library's nodeutil.NewNode): these labels only, this taint
# by default (its value was `saladcloud` in some releases), no `nvidia.com/gpu` resource.
SALAD_NODE_LABELS = {"type": "virtual-kubelet", "kubernetes.io/role": "agent"}  # + kubernetes.io/hostname
SALAD_TAINT = {"key": VIRTUAL_KUBELET_PROVIDER, "value": "saladCloud", "effect": "NoSchedule"}


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint["value"]:
            return True
    return False


def check_salad_pod(name: str, template: dict[str, Any]) -> None:
    """A pod the real Salad node can take and run: it selects only labels that node has (and one of
    them, or it could land on any untainted node), tolerates its default taint, requests no GPU (the
    node has none; the GPU class is the `salad.com/gpu-classes` annotation), and takes no env from
    `valueFrom`/`envFrom` (the provider passes only plain values to the container)."""
    pod = template["spec"]
    selector = pod.get("nodeSelector", {})
    assert selector and selector.items() <= SALAD_NODE_LABELS.items(), (name, selector)
    assert "affinity" not in pod, name
    assert tolerates(pod.get("tolerations", []), SALAD_TAINT), name
    assert template["metadata"]["annotations"]["salad.com/gpu-classes"].strip(), name
    for container in pod["containers"]:
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert not any("gpu" in r for r in resources.get(kind, {})), (name, resources)
        assert "envFrom" not in container, name
        assert all("valueFrom" not in e for e in container.get("env", [])), (name, container["env"])


@pytest.mark.parametrize("folder", sorted(p.name for p in (ROOT / "policies").iterdir() if p.is_dir()))
def test_shipped_queue_sla_policies_list_only_the_triggers_queue_sla_reads(folder: str) -> None:
    """A trigger the policy never reads can still fail and trip the fallback (`hold`): the shipped
    Salad example once froze at 9 units under a backlog of 3,250 because its unread `ttft` trigger
    had no exporter to answer it."""
    from autoscaler.policies.queue_sla import QueueSlaPolicy

    loaded = load_config([ROOT / "policies" / folder])
    assert not loaded.errors, loaded.errors
    for wl in loaded.workloads:
        if isinstance(wl.policy, QueueSlaPolicy):
            read = {wl.policy.options.backlog_trigger, wl.policy.options.rate_trigger}
            assert {t.name for t in wl.triggers} <= read, (folder, wl.name)
