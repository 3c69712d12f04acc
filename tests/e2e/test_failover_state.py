"""A failover in the middle of a queue-sla hold window does not shrink the fleet: the new leader
resumes with the old leader's decision state, which travels in the Lease.

Two replicas, a real RabbitMQ queue, the fake API server. The standby replica `b` cannot reach the
broker while the burst lasts (its own network trouble: the leader's is fine), so on its own it
never saw the need the leader holds. The backlog rises, the leader scales the fleet up, the backlog
drops to zero and queue-sla holds the highest need for `holdSeconds`; then the leader crashes (no
Lease release). The new leader must keep the fleet until the hold window ends, and only then let
it go. Without the state in the Lease, it would scale to zero as soon as it leads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.e2e.harness import Queue, World, chat_policy, e2e_test, election
from tests.eventually import eventually
from tests.integration.servers import RabbitMQServer

LEASE_SECONDS = 2.0
RETRY_SECONDS = 0.25
# Long enough for the follower to reconnect to the broker and the Lease to expire on a loaded machine.
HOLD_SECONDS = 15.0
# queue-sla keeps its hold in buckets of 5 s: the hold ends between HOLD and HOLD + 5 s after the
# last high need.
BUCKET_SECONDS = 5.0
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"


# need = backlog / maxWait / serviceRate: a backlog of 30 needs 3 replicas. The flat hold, so the
# whole need is held until the window ends (the default decaying hold has unit tests of its own).
HOLD_POLICY = (
    "{type: queue-sla, maxWaitSeconds: 10, serviceRatePerReplica: 1, headroom: 0, lookahead: false,"
    f" holdDecay: false, holdSeconds: {HOLD_SECONDS:g}}}"
)


@e2e_test
async def test_a_new_leader_keeps_the_fleet_until_the_old_leaders_hold_ends(
    world: World, chat_queue: Queue, rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(chat_policy(chat_queue.name, policy=HOLD_POLICY))
    timers = election(LEASE_SECONDS, RETRY_SECONDS)
    b_env = {"RABBITMQ_URL": rabbitmq.amqp_url}
    a = await world.start("a", policies, **timers)
    await eventually(lambda: a.live.elector is not None and a.live.elector.is_leader, 5, "a")
    b = await world.start("b", policies, environ=b_env, **timers)
    await eventually(lambda: b.controller.ready, 10, "b ready")
    assert b.live.elector is not None and not b.live.elector.is_leader

    b_env["RABBITMQ_URL"] = UNREACHABLE  # b is blind while the burst lasts
    await eventually(lambda: b.controller.readings["chat"]["backlog"].value is None, 5, "b blind")
    await chat_queue.set_length(30)
    await eventually(lambda: world.replicas("chat-a100") == 3, 5, "scaled up by the leader")
    await chat_queue.set_length(0)
    dropped = time.time()
    await eventually(lambda: a.controller.readings["chat"]["backlog"].value == 0, 5, "the leader sees 0")
    b_env["RABBITMQ_URL"] = rabbitmq.amqp_url
    await eventually(lambda: b.controller.readings["chat"]["backlog"].value == 0, 5, "b sees 0")
    # The follower decides as the leader does, from the leader's state: it holds 3 too.
    await asyncio.sleep(2 * RETRY_SECONDS)
    await b.controller.reconcile_once()
    decision = b.controller.decisions["chat"]
    assert decision.desired_units == 3, decision.explain()
    assert world.replicas("chat-a100") == 3

    await a.stop(release_lease=False)  # a crash, as b sees it
    await eventually(lambda: b.live.elector is not None and b.live.elector.is_leader, 5, "b")
    led = time.time()
    assert led < dropped + HOLD_SECONDS - 1, "the takeover came too late to test the hold"

    # b reconciles as the leader (resync 1 s) for the rest of the hold: the fleet stays.
    while time.time() < dropped + HOLD_SECONDS:
        assert world.replicas("chat-a100") == 3, b.controller.decisions["chat"].explain()
        await asyncio.sleep(0.05)
    assert b.controller.stats.reconciles > 0
    # Then the hold ends and the new leader lets the capacity go.
    await eventually(lambda: world.replicas("chat-a100") == 0, BUCKET_SECONDS + 3, "scaled in after the hold")
    downs = [x for x in world.scale_writes("chat-a100") if x.who == "token-b"]
    assert downs, "the new leader scaled in"
