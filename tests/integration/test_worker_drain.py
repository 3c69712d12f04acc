"""The example RabbitMQ worker (deploy/examples/rabbitmq-worker/worker.py), the consumer half of
idle-first scale-in, run as the kubelet runs it against a real broker: on SIGTERM it stops consuming,
finishes and acks what it holds, and exits; what it could not finish within DRAIN_SECONDS goes back
to the queue for the other workers. No message is lost either way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import pytest

from tests.integration.servers import RabbitMQServer

WORKER = Path(__file__).parents[2] / "deploy" / "examples" / "rabbitmq-worker" / "worker.py"


async def _publish(server: RabbitMQServer, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(server.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
            )


async def _ready(server: RabbitMQServer, queue: str) -> int:
    """Messages ready in `queue` (a fresh passive declare: unacknowledged ones are not counted)."""
    connection = await aio_pika.connect(server.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        await declared.delete(if_unused=False, if_empty=False)
        return int(count or 0)


def _worker(server: RabbitMQServer, queue: str, drain: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RABBITMQ_URL": server.amqp_url,
        "QUEUE": queue,
        "PREFETCH": "1",
        "DRAIN_SECONDS": str(drain),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _sigterm_while_busy(worker: subprocess.Popen[str], busy_for: float) -> str:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    assert line.startswith("consuming"), line
    time.sleep(busy_for)  # the first message is in hand (prefetch 1), the others wait in the queue
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=15)
    assert worker.returncode == 0, out
    return out


@pytest.mark.parametrize(("job_seconds", "drain", "left"), [(1.0, 10.0, 2), (5.0, 0.3, 3)])
def test_sigterm_finishes_the_message_in_hand_or_gives_it_back(
    rabbitmq: RabbitMQServer, job_seconds: float, drain: float, left: int
) -> None:
    queue = f"worker-drain-{uuid.uuid4().hex[:8]}"
    asyncio.run(_publish(rabbitmq, queue, [str(job_seconds).encode()] * 3))
    started = time.monotonic()
    out = _sigterm_while_busy(_worker(rabbitmq, queue, drain), busy_for=0.5)
    took = time.monotonic() - started
    assert "draining 1 message(s) in hand" in out and "drained" in out, out
    # Finished in time: acked, 2 left for the others. Out of time: not acked, all 3 back.
    assert asyncio.run(_ready(rabbitmq, queue)) == left
    assert took < job_seconds + drain + 10  # it exits, it does not wait for the queue to empty
