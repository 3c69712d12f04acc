"""deploy/kubernetes/member (applied in each member cluster) and deploy/multicluster (the hub, the
multicluster-hub component on the VKS example): valid objects, a member grants exactly the base's
cluster-wide rights and nothing on Leases, its token Secret belongs to that ServiceAccount, and the
hub reads its member list from the mounted Secret in the form the settings accept (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoscaler.settings import Settings
from tests.deploy.conftest import by_kind, invalid, render
from tests.deploy.test_kubernetes import (
    CLUSTER_GRANTS,
    NAMESPACE,
    autoscaler_deployment,
    env_of,
    grants,
)

MEMBER = "member"
HUB = "../multicluster"  # relative to deploy/kubernetes, as `render` takes it


@pytest.mark.parametrize("tree", [MEMBER, HUB])
def test_the_multicluster_trees_are_valid_against_the_kubernetes_schemas(tree: str) -> None:
    assert invalid(render(tree)) == []


def test_a_member_grants_the_base_cluster_rights_and_nothing_on_leases() -> None:
    objects = render(MEMBER)
    assert {o["kind"] for o in objects} == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
    }, "no autoscaler, no leader election, no metrics objects in a member"
    (role,) = by_kind(objects, "ClusterRole")
    (base_role,) = by_kind(render("base"), "ClusterRole")
    assert role["rules"] == base_role["rules"]  # one rbac.yaml for both: the rights cannot drift
    assert grants(role["rules"]) == CLUSTER_GRANTS
    (account,) = by_kind(objects, "ServiceAccount")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [subject] and binding["roleRef"]["name"] == role["metadata"]["name"]
    (token,) = by_kind(objects, "Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["namespace"] == NAMESPACE
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == subject["name"]


def test_the_hub_reads_its_members_from_the_mounted_secret(tmp_path: Path) -> None:
    deployment = autoscaler_deployment(render(HUB))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    members_file = Path(env_of(container)["AUTOSCALER_CLUSTERS"]["value"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == members_file.parent]
    assert mounts[name]["readOnly"] is True
    assert volumes[name]["secret"]["secretName"] == "gpu-autoscaler-members"
    assert deployment["spec"]["replicas"] == 2  # a hub keeps a follower with its caches synced

    # The members.yaml the component's comment shows, at a path like the mounted one: the settings
    # take it, home cluster first.
    home = env_of(container)["AUTOSCALER_CLUSTER_NAME"]["value"]
    listing = [
        {"name": "vks-2", "kubeconfig": str(members_file.parent / "vks-2.kubeconfig")},
        {"name": "vks-3", "kubeconfig": str(members_file.parent / "vks-3.kubeconfig")},
    ]
    local = tmp_path / members_file.name
    local.write_text(yaml.safe_dump(listing))
    settings = Settings(cluster_name=home, clusters=str(local))
    assert [m.name for m in settings.members()] == [home, "vks-2", "vks-3"]
