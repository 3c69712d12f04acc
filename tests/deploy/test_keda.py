"""deploy/keda and the keda-external-scaler component: the tree renders, its Kubernetes objects are
valid, the gRPC port agrees between the settings, the container, the Service and the NetworkPolicy,
and every example ScaledObject reaches the Service and names a pool the deployed policies have (the
real scaler answers it from a real decision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoscaler.config import load_config
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, PoolStatus, Reading, Reconciled
from autoscaler.external.scaler import DecisionBoard, Ref
from autoscaler.settings import Settings
from tests.deploy.conftest import by_kind, invalid, render
from tests.deploy.test_kubernetes import NAMESPACE, autoscaler_deployment, env_of

TREE = "../keda"  # relative to deploy/kubernetes, as `render` takes it


def test_the_keda_example_is_valid_against_the_kubernetes_schemas() -> None:
    assert invalid(render(TREE)) == []  # the ScaledObjects (a CRD) are checked below


def _grpc_service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("external-scaler")]
    return service


def test_the_grpc_port_agrees_everywhere() -> None:
    objects = render(TREE)
    deployment = autoscaler_deployment(objects)
    assert deployment["spec"]["replicas"] == 1  # only the leader answers: see deployment-patch.yaml
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {name: e["value"] for name, e in env_of(container).items() if "value" in e}
    settings = Settings(
        external_scaler_port=env["AUTOSCALER_EXTERNAL_SCALER_PORT"],
        external_scaler_bind_address=env["AUTOSCALER_EXTERNAL_SCALER_BIND_ADDRESS"],
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (port,) = _grpc_service(objects)["spec"]["ports"]
    assert ports[port["targetPort"]] == settings.external_scaler_port == port["port"]
    (policy,) = [p for p in by_kind(objects, "NetworkPolicy") if "external-scaler" in p["metadata"]["name"]]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": port["targetPort"], "protocol": "TCP"}]


def test_every_scaled_object_is_answered_by_the_scaler(tmp_path: Path) -> None:
    objects = render(TREE)
    service = _grpc_service(objects)
    address = f"{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    (config_map,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["namespace"] == NAMESPACE]
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    env = env_of(autoscaler_deployment(objects)["spec"]["template"]["spec"]["containers"][0])
    config = load_config([tmp_path], default_cluster=env["AUTOSCALER_CLUSTER_NAME"]["value"])
    assert not config.errors
    pools = {p.key: p for w in config.workloads for p in w.pools}
    readings = {w.name: {t.name: Reading(5.0, 0.0) for t in w.triggers} for w in config.workloads}
    snapshot = ClusterSnapshot({key: PoolStatus(1, ready=1) for key in pools})
    plan, _ = reconcile(config.workloads, snapshot, readings, EngineState(), config.limits, 0.0)
    board = DecisionBoard()
    board.set_leader(True)
    board.observe(
        Reconciled(
            now=0.0,
            workloads=config.workloads,
            limits=config.limits,
            snapshot=snapshot,
            readings=readings,
            plan=plan,
            duration_seconds=0.0,
        )
    )

    scaled = by_kind(objects, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {p.deployment for p in pools.values()}
    for obj in scaled:
        namespace, spec = obj["metadata"]["namespace"], obj["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] in ("external", "external-push")
        metadata = trigger["metadata"]
        assert metadata["scalerAddress"] == address
        assert metadata["deployment"] == spec["scaleTargetRef"]["name"]
        # A KEDA range narrower than ours would clamp our count.
        (workload,) = [w for w in config.workloads if w.name == metadata["workload"]]
        pool = pools[f"{namespace}/{metadata['deployment']}"]
        assert spec["maxReplicaCount"] >= (pool.max_replicas or workload.max_replicas)
        assert spec["minReplicaCount"] == 0
        for direction in ("scaleUp", "scaleDown"):
            assert (
                spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][direction][
                    "stabilizationWindowSeconds"
                ]
                == 0
            )
        replicas = board.replicas(Ref(obj["metadata"]["name"], namespace, metadata))
        assert replicas == plan.decisions[workload.name].targets[pool.key]
