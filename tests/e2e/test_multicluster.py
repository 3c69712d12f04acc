"""One `autoscaler run` manages three clusters, each its own fake API server, under one company GPU
cap (issue 12). Every fake checks, after each write it accepts, that the GPUs held in ALL the
clusters together stay within `companyMaxGpus`, with and without injected API failures. A member
cut off mid-run keeps its GPUs counted, is never written to, and the others go on scaling; when it
comes back, the autoscaler converges there too."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio

from tests.e2e.harness import (
    A100,
    CLUSTER,
    NAMESPACE,
    Instance,
    World,
    e2e_test,
    election,
    fast_behavior,
    gpus_held,
)
from tests.eventually import eventually
from tests.kube.fakeapi import FakeKube

MEMBERS = ("vks-2", "vks-3")


def _policy(name: str, cluster: str, priority: int, gpus: int, queue: str) -> str:
    return f"""
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  priority: {priority}
  maxReplicas: 20
  pools: [{{deployment: {name}-a100, cluster: {cluster}, nodeClass: regular, gpuType: A100,
            gpusPerReplica: {gpus}, startupSeconds: 1}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: {queue}, targetPerReplica: 10, activation: 0, pollSeconds: 0.2}}
{fast_behavior(cooldown=0.5)}
"""


def _limits(cap: int) -> str:
    clusters = ", ".join(f"{{name: {c}, gpuTypes: {{A100: 32}}}}" for c in (CLUSTER, *MEMBERS))
    return f"""
---
apiVersion: gpu-autoscaler/v1alpha1
kind: ParallelismLimits
metadata: {{name: company}}
spec:
  companyMaxGpus: {cap}
  clusters: [{clusters}]
"""


@dataclass
class Fleet:
    """The home cluster (the world's fake) and the member fakes, by cluster name, and which
    Deployment (with its GPUs per replica) lives where."""

    world: World
    fakes: dict[str, FakeKube]
    deployments: dict[str, tuple[str, int]]  # deployment -> (cluster, GPUs per replica)

    def held(self) -> int:
        return sum(
            gpus_held(self.fakes[cluster], {name: gpus}) for name, (cluster, gpus) in self.deployments.items()
        )

    def replicas(self, name: str) -> int:
        cluster = self.deployments[name][0]
        spec: int = self.fakes[cluster].deployment(NAMESPACE, name)["spec"]["replicas"]
        return spec

    def add(self, name: str, cluster: str, gpus: int) -> None:
        self.deployments[name] = (cluster, gpus)
        self.fakes[cluster].add_deployment(NAMESPACE, name, gpus_per_replica=gpus)

    def guard(self, cap: int) -> None:
        """Every fake checks the sum over all of them at each write it accepts."""

        def within(_: FakeKube) -> str | None:
            held = self.held()
            if held > cap:
                sizes = {name: self.replicas(name) for name in self.deployments}
                return f"{held} GPUs held across the clusters > company cap {cap}: {sizes}"
            return None

        for fake in self.fakes.values():
            fake.add_invariant(within)

    def violations(self) -> list[str]:
        return [v for fake in self.fakes.values() for v in fake.violations]

    async def start(self, name: str, policies: Path, **overrides: Any) -> Instance:
        """A replica managing every fake; its bearer token names it in each fake's write log."""
        tmp, token = self.world.tmp, f"token-{name}"
        members = [
            {"name": cluster, "kubeconfig": str(fake.write_kubeconfig(tmp / f"kc-{cluster}-{name}", token))}
            for cluster, fake in self.fakes.items()
            if cluster != CLUSTER
        ]
        return await self.world.start(name, policies, clusters=members, **overrides)


@pytest_asyncio.fixture
async def fleet(world: World) -> Fleet:
    """The home cluster's fake and one per member, each with a 16-GPU A100 node; the members are
    the world's to tear down (faults off, replicas stopped, then the servers)."""
    fakes = {CLUSTER: world.fake}
    for cluster in MEMBERS:
        fake = FakeKube(ready_delay={"regular": 0.1, "virtual": 0.3}, terminating_seconds=0.5)
        await fake.start()
        world.members.append(fake)
        fakes[cluster] = fake
    for i, fake in enumerate(fakes.values()):
        fake.add_node(f"gpu-{i}", 16, labels=A100)
    return Fleet(world, fakes, {})


@e2e_test
async def test_one_company_cap_across_clusters_at_every_write(fleet: Fleet, tmp_path: Path) -> None:
    # chat (1 GPU a replica) in the home cluster, batch (2 GPUs) in vks-2: the company cap of 6 is
    # shared, exactly as two workloads in one cluster would share it.
    cap = 6
    fleet.add("chat-a100", CLUSTER, 1)
    fleet.add("batch-a100", "vks-2", 2)
    fleet.guard(cap)
    chat, batch = await fleet.world.queue(), await fleet.world.queue()
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        _policy("chat", CLUSTER, 100, 1, chat.name)
        + "---"
        + _policy("batch", "vks-2", 10, 2, batch.name)
        + _limits(cap)
    )
    instance = await fleet.start("a", policies)
    await eventually(lambda: instance.controller.ready, 10, "ready")
    for seed, fake in enumerate(fleet.fakes.values()):
        fake.faults.random_failures(0.1, seed=seed)

    def sizes() -> tuple[int, int]:
        return fleet.replicas("chat-a100"), fleet.replicas("batch-a100")

    await batch.set_length(100)
    await eventually(lambda: sizes() == (0, 3), 15, "batch at the company cap")
    # chat, in another cluster, takes its share: batch gives up two replicas first.
    await chat.set_length(40)
    await eventually(lambda: sizes() == (4, 1), 15, "chat takes its share")
    await chat.set_length(0)
    await eventually(lambda: sizes() == (0, 3), 15, "batch back at the cap")
    await chat.set_length(60)
    await eventually(lambda: sizes() == (6, 0), 15, "chat takes everything")
    await eventually(lambda: fleet.held() == cap, 15, "terminating pods gone")

    assert fleet.violations() == []
    accepted = {c: [w for w in f.scale_writes() if w.status < 300] for c, f in fleet.fakes.items()}
    assert accepted[CLUSTER] and accepted["vks-2"], "both clusters were resized"
    assert not accepted["vks-3"], "no pool lives in vks-3"
    # Events go to the cluster of the Deployment they describe.
    assert fleet.fakes["vks-2"].events_for(NAMESPACE, "batch-a100")


@e2e_test
async def test_a_partitioned_member_holds_and_counts_while_the_others_scale(
    fleet: Fleet, tmp_path: Path
) -> None:
    cap = 8
    fleet.add("chat-a100", CLUSTER, 1)
    fleet.add("batch-a100", "vks-2", 2)
    fleet.add("embed-a100", "vks-3", 1)
    fleet.guard(cap)
    chat, batch, embed = [await fleet.world.queue() for _ in range(3)]
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        _policy("chat", CLUSTER, 100, 1, chat.name)
        + "---"
        + _policy("batch", "vks-2", 10, 2, batch.name)
        + "---"
        + _policy("embed", "vks-3", 50, 1, embed.name)
        + _limits(cap)
    )
    instance = await fleet.start("a", policies)
    await eventually(lambda: instance.controller.ready, 10, "ready")

    def sizes() -> tuple[int, int, int]:
        return fleet.replicas("chat-a100"), fleet.replicas("batch-a100"), fleet.replicas("embed-a100")

    def up(cluster: str) -> bool:
        assert instance.live.fleet is not None
        return next(h.up for h in instance.live.fleet.health() if h.name == cluster)

    await batch.set_length(20)
    await eventually(lambda: sizes() == (0, 2, 0), 10, "batch holds 4 GPUs in vks-2")

    # vks-2 is cut off: every request fails, the watches break.
    vks2 = fleet.fakes["vks-2"]
    vks2.partition()
    await eventually(lambda: not up("vks-2"), 10, "vks-2 seen as unreachable")
    cut_at = time.monotonic()
    # batch now wants nothing, but nothing can be written there: it holds its 4 GPUs, which still
    # count. chat (priority) takes 3, embed gets what is left under the cap of 8: 1.
    await batch.set_length(0)
    await chat.set_length(30)
    await embed.set_length(50)
    await eventually(lambda: sizes() == (3, 2, 1), 10, "the others scale under what is left")
    decision = instance.controller.decisions["batch"]
    assert any(step.startswith("cluster vks-2 unreachable since") for step in decision.steps)
    tried = [w for w in vks2.scale_writes() if w.at >= cut_at]
    assert tried == [], "nothing is written to a cluster that cannot be reached"

    # The home cluster has an Event on the hub's own Pod for it (replica "a", namespace default).
    def reasons() -> list[str]:
        return [e["reason"] for e in fleet.fakes[CLUSTER].events_for("default", "a")]

    await eventually(lambda: "ClusterUnreachable" in reasons(), 5, "an Event for the lost cluster")
    (lost,) = [
        e for e in fleet.fakes[CLUSTER].events_for("default", "a") if e["reason"] == "ClusterUnreachable"
    ]
    assert lost["type"] == "Warning" and "vks-2" in lost["message"]
    assert lost["involvedObject"]["kind"] == "Pod"

    # It comes back: batch goes to zero there, which frees 4 GPUs for embed.
    vks2.heal()
    await eventually(lambda: up("vks-2"), 20, "vks-2 reachable again")
    await eventually(lambda: "ClusterReachable" in reasons(), 5, "an Event for its return")
    await eventually(lambda: sizes() == (3, 0, 5), 15, "converged after the partition")
    assert fleet.violations() == []


@e2e_test
async def test_the_home_lease_decides_who_writes_in_every_cluster(fleet: Fleet, tmp_path: Path) -> None:
    # Two replicas; the Lease is in the home cluster only. The member fake checks, at every write
    # it accepts, that the writer holds the home cluster's Lease at that moment.
    lease = "default/gpu-autoscaler"
    fleet.add("batch-a100", "vks-2", 2)
    home = fleet.fakes[CLUSTER]

    def by_the_leader(member: FakeKube) -> str | None:
        write = member.writes[-1]
        holder = home.lease_holders().get(lease)
        if f"token-{holder}" != write.who:
            return f"{write.verb} {write.path} by {write.who} while {holder} holds the Lease"
        return None

    fleet.fakes["vks-2"].add_invariant(by_the_leader)
    batch = await fleet.world.queue()
    policies = tmp_path / "policies.yaml"
    policies.write_text(_policy("batch", "vks-2", 10, 2, batch.name) + _limits(8))
    timers = election(2.0, 0.25)
    a = await fleet.start("a", policies, **timers)
    await eventually(lambda: a.live.elector is not None and a.live.elector.is_leader, 5, "a leads")
    b = await fleet.start("b", policies, **timers)
    await eventually(lambda: b.controller.ready, 10, "b ready")

    await batch.set_length(20)
    await eventually(lambda: fleet.replicas("batch-a100") == 2, 5, "scaled by the leader")
    await a.stop(release_lease=False)  # a crash, as the others see it
    crashed = time.monotonic()
    await eventually(lambda: b.live.elector is not None and b.live.elector.is_leader, 5, "b leads")
    await batch.set_length(40)
    await eventually(lambda: fleet.replicas("batch-a100") == 4, 5, "scaled by the new leader")

    writes = fleet.fakes["vks-2"].scale_writes()
    assert {w.who for w in writes if w.at < crashed} == {"token-a"}
    assert {w.who for w in writes if w.at >= crashed} == {"token-b"}
    assert fleet.violations() == []
