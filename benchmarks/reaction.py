"""Reaction time: from publishing a burst to a real RabbitMQ to the engine's scale-up decision.

    python benchmarks/reaction.py [--trials 20] [--burst 50] [--poll SECONDS]

Starts its own broker (Debian's rabbitmq-server, on free loopback ports, as the integration tests
do), then runs `--trials` trials. Each trial starts a fresh controller (the live loop with the real
RabbitMQ source and the dry-run cluster as actuator) for one workload on a fresh empty queue, waits
for its first decision (0 replicas), waits a random fraction of the poll interval (so the burst
lands at a random phase of the poll, as real traffic does), publishes the burst and records the
time until the actuator sees the scale-up. Default settings: the trigger's default 1 s poll, the
loop's 20 ms debounce, HPA default behavior. Prints p50/p99/max and KEDA's defaults for comparison
(KEDA polls every 30 s for 0 -> 1, and the HPA's 15 s sync adds up to 15 s more before 1 -> N).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.integration.servers

from autoscaler.config import load_config
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.settings import Settings
from autoscaler.sources import Source, SourceContext, build_source
from tests.integration.servers import RabbitMQServer, binaries_present

POLICY = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {{name: chat, namespace: bench}}
spec:
  maxReplicas: 40
  pools: [{{deployment: chat-a100, nodeClass: regular, gpuType: A100}}]
  triggers:
    - {{name: backlog, type: rabbitmq, queue: {queue}, targetPerReplica: 10{poll}}}
"""

KEDA_ZERO_TO_ONE = 30.0  # ScaledObject pollingInterval default
KEDA_ONE_TO_N = 45.0  # + the HPA's 15 s sync before the first 1 -> N decision


async def trial(
    server: RabbitMQServer,
    context: SourceContext,
    workdir: Path,
    burst: int,
    poll: float | None,
    rng: random.Random,
) -> float:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    publisher = await aio_pika.connect(server.amqp_url)
    async with publisher:
        channel = await publisher.channel()
        await channel.declare_queue(queue, auto_delete=False)
        path = workdir / f"{queue}.yaml"
        path.write_text(POLICY.format(queue=queue, poll=f", pollSeconds: {poll}" if poll else ""))
        config = load_config([path])
        if not config.ok:
            raise SystemExit("\n".join(map(str, config.errors)))
        settings = Settings()
        sources: dict[TriggerKey, Source] = {
            TriggerKey(w.name, t.name): build_source(w, t, settings, context=context)
            for w in config.workloads
            for t in w.triggers
        }
        cluster = DryRunCluster(config.workloads)
        controller = Controller(config.workloads, config.limits, sources, cluster, cluster)
        task = asyncio.create_task(controller.run())
        try:
            while controller.stats.reconciles == 0:
                await asyncio.sleep(0.005)
            poll_seconds = next(iter(sources.values())).poll_seconds
            await asyncio.sleep(rng.uniform(0, poll_seconds))
            published = time.monotonic()
            for i in range(burst):
                await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=queue)
            while True:
                ups = [a for a in cluster.history if a.scaled_up]
                if ups:
                    return ups[0].at - published
                if time.monotonic() - published > 60:
                    raise RuntimeError("no scale-up within 60 s")
                await asyncio.sleep(0.002)
        finally:
            controller.stop()
            await task
            for source in sources.values():
                await source.close()
            await channel.queue_delete(queue)


async def run(server: RabbitMQServer, trials: int, burst: int, poll: float | None, seed: int) -> list[float]:
    rng = random.Random(seed)
    context = SourceContext({"RABBITMQ_URL": server.amqp_url})
    workdir = Path(tempfile.mkdtemp(prefix="reaction-"))
    try:
        return [await trial(server, context, workdir, burst, poll, rng) for _ in range(trials)]
    finally:
        await context.aclose()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50, help="messages per burst")
    parser.add_argument(
        "--poll", type=float, default=None, help="trigger pollSeconds (default: RabbitMQ's 1 s)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not binaries_present()["rabbitmq"]:
        print("rabbitmq-server is not installed: apt-get install -y rabbitmq-server", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="reaction-rabbitmq-"))
    server = RabbitMQServer(base)
    print(f"starting rabbitmq on 127.0.0.1:{server.amqp_port} ...", file=sys.stderr)
    server.start()
    try:
        times = asyncio.run(run(server, args.trials, args.burst, args.poll, args.seed))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    p50, p99 = statistics.median(times), cuts[98]
    poll = f"{args.poll:g} s" if args.poll else "1 s (default)"
    print(
        f"reaction: publish of a {args.burst}-message burst -> scale-up decision, "
        f"{len(times)} trials, poll {poll}"
    )
    print(f"  p50 {p50:.3f} s   p99 {p99:.3f} s   min {min(times):.3f} s   max {max(times):.3f} s")
    print(f"  goal p99 < 1.5 s: {'met' if p99 < 1.5 else 'NOT met'}")
    print(
        f"  KEDA defaults allow up to {KEDA_ZERO_TO_ONE:.0f} s for 0 -> 1 (pollingInterval) and up to "
        f"{KEDA_ONE_TO_N:.0f} s for the first 1 -> N decision: p99 is "
        f"{KEDA_ZERO_TO_ONE / p99:.0f}x / {KEDA_ONE_TO_N / p99:.0f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
