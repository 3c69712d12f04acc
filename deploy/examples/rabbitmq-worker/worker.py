"""A RabbitMQ worker that drains on scale-in: the consumer side of gpu-autoscaler's scale-in.

When the ReplicaSet removes this pod, the kubelet sends SIGTERM, waits up to
terminationGracePeriodSeconds, then SIGKILLs. To lose no work and hold no message hostage:
- prefetch (basic.qos) is small, so a dying worker holds at most PREFETCH unacknowledged messages;
  the broker redelivers any it did not ack to the other workers;
- on SIGTERM it stops consuming first (basic.cancel), so the broker sends it nothing new;
- it finishes the messages already in hand and acks each after its work is done (never before);
- it exits before the grace period ends: DRAIN_SECONDS < terminationGracePeriodSeconds.

Needs aio-pika. Environment: RABBITMQ_URL, QUEUE, PREFETCH (default 1), DRAIN_SECONDS (default 600).
Replace `work` with the real job.
"""

import asyncio
import os
import signal

import aio_pika


async def work(body: bytes) -> None:
    await asyncio.sleep(float(body or b"1"))  # stands in for a GPU job


async def main() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)

    connection = await aio_pika.connect_robust(os.environ["RABBITMQ_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(os.environ.get("PREFETCH", "1")))
    queue = await channel.declare_queue(os.environ["QUEUE"], durable=True)
    in_flight: set[asyncio.Task[None]] = set()

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        # requeue=True: a job that fails goes back to the queue rather than being lost.
        async with message.process(requeue=True):
            await work(message.body)

    async def consume(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        # Tracked, so that SIGTERM can wait for exactly the messages in hand.
        task = asyncio.ensure_future(handle(message))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    tag = await queue.consume(consume)
    print(f"consuming {queue.name}", flush=True)
    await stopping.wait()

    await queue.cancel(tag)  # nothing new arrives from here on
    print(f"SIGTERM: draining {len(in_flight)} message(s) in hand", flush=True)
    drain = float(os.environ.get("DRAIN_SECONDS", "600"))
    if in_flight:
        _, late = await asyncio.wait(in_flight, timeout=drain)
        for task in late:  # out of time: unacked, so the broker redelivers them elsewhere
            task.cancel()
    await connection.close()
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
