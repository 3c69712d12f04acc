"""Two autoscaler replicas with Lease leader election against the fake API server: only the leader
writes; when the leader crashes (stops without releasing the Lease) the other takes over within
the lease duration, and the fake's write log shows every scale write made by the Lease holder of
that moment: no write from the old leader after the handover, none from the follower before it."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.harness import Queue, World, chat_policy, e2e_test, election
from tests.eventually import eventually

LEASE = "default/gpu-autoscaler"
LEASE_SECONDS = 2.0
RETRY_SECONDS = 0.25


@e2e_test
async def test_a_crashed_leader_is_replaced_within_the_lease_duration_without_double_writes(
    world: World, chat_queue: Queue, tmp_path: Path
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(chat_policy(chat_queue.name))
    timers = election(LEASE_SECONDS, RETRY_SECONDS)
    a = await world.start("a", policies, **timers)
    assert a.live.elector is not None
    await eventually(lambda: a.live.elector is not None and a.live.elector.is_leader, 5, "a leads")
    b = await world.start("b", policies, **timers)
    assert b.live.elector is not None
    await eventually(lambda: b.controller.ready, 10, "b ready")

    await chat_queue.set_length(30)
    await eventually(lambda: world.replicas("chat-a100") == 3, 5, "scaled by the leader")
    assert {x.who for x in world.scale_writes()} == {"token-a"}
    assert not b.live.elector.is_leader

    await a.stop(release_lease=False)  # a crash, as the others see it
    crashed = time.monotonic()
    took = await eventually(lambda: b.live.elector is not None and b.live.elector.is_leader, 5, "b leads")
    # b must wait out the lease a last renewed (it cannot know a is gone); one retry
    # period to notice, plus scheduling slack.
    assert took <= LEASE_SECONDS + 2 * RETRY_SECONDS + 0.5, took
    assert world.fake.lease_holders()[LEASE] == "b"

    await chat_queue.set_length(60)
    await eventually(lambda: world.replicas("chat-a100") == 6, 5, "scaled by the new leader")

    took_over = min(
        x.at for x in world.fake.writes if "/leases/" in x.path and x.who == "token-b" and x.status < 300
    )
    assert took_over >= crashed
    assert not [x for x in world.fake.writes if x.who == "token-a" and x.at >= crashed]
    writers = {"token-a": "a", "token-b": "b"}
    for write in world.scale_writes():
        assert write.lease_holders[LEASE] == writers[write.who], write
    assert {x.who for x in world.scale_writes() if x.at >= took_over} == {"token-b"}
