"""The RabbitMQ source against a real broker: counts, unacknowledged messages, failures, recovery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from autoscaler.config.access import SecretAccess
from autoscaler.config.models import RabbitMQOptions
from autoscaler.engine.types import Reading
from autoscaler.sources.base import SourceContext
from autoscaler.sources.rabbitmq import RabbitMQSource
from tests.integration.servers import RabbitMQServer

# The management API refreshes its queue counters every 5 s (collect_statistics_interval).
STATS_WAIT = 15.0


def _queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def _env(server: RabbitMQServer) -> dict[str, str]:
    return {"RABBITMQ_URL": server.amqp_url, "RABBITMQ_MANAGEMENT_URL": server.management_url}


def _source(
    server: RabbitMQServer, context: SourceContext, *queues: str, http: bool = False, **kw: object
) -> RabbitMQSource:
    options = RabbitMQOptions(
        queues=list(queues),
        protocol="http" if http else "amqp",
        connection_from_env="RABBITMQ_MANAGEMENT_URL" if http else "RABBITMQ_URL",
        **kw,  # type: ignore[arg-type]
    )
    return RabbitMQSource("'ns/wl/backlog'", options, context)


async def _publish(server: RabbitMQServer, queue: str, n: int, *, declare: bool = True) -> None:
    connection = await aio_pika.connect(server.amqp_url)
    async with connection:
        channel = await connection.channel()
        if declare:
            await channel.declare_queue(queue, durable=True)
        for i in range(n):
            await channel.default_exchange.publish(
                aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
            )


async def _until(
    read: Callable[[], Awaitable[Reading]], check: Callable[[Reading], bool], wait: float
) -> Reading:
    """Read until `check` holds or `wait` seconds passed; the last reading either way."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        reading = await read()
        if check(reading) or asyncio.get_running_loop().time() > deadline:
            return reading
        await asyncio.sleep(0.2)


def test_publishing_n_messages_moves_the_amqp_reading_to_n(rabbitmq: RabbitMQServer) -> None:
    async def scenario() -> None:
        context = SourceContext(_env(rabbitmq))
        a, b = _queue(), _queue()
        await _publish(rabbitmq, a, 0)
        total = _source(rabbitmq, context, a, b)
        biggest = _source(rabbitmq, context, a, b, operation="max")
        single = _source(rabbitmq, context, a)
        try:
            assert (await single.read()).value == 0
            await _publish(rabbitmq, a, 17)
            # A second read on the same channel must see the new count (not the first declare's).
            assert (await single.read()).value == 17
            await _publish(rabbitmq, b, 5)
            assert (await total.read()).value == 22
            assert (await biggest.read()).value == 17
            assert single.last_consumers == {a: 0}
            # Three triggers on one URL share one connection.
            shared = context.shared["rabbitmq.amqp"]
            assert len(shared._connections) == 1  # type: ignore[attr-defined]
        finally:
            for s in (total, biggest, single):
                await s.close()
            await context.aclose()

    asyncio.run(scenario())


def test_unacknowledged_messages_count_in_http_mode_but_not_in_amqp_mode(rabbitmq: RabbitMQServer) -> None:
    async def scenario() -> None:
        context = SourceContext(_env(rabbitmq))
        q = _queue()
        await _publish(rabbitmq, q, 5)
        amqp = _source(rabbitmq, context, q)
        http = _source(rabbitmq, context, q, http=True)
        ready_only = _source(rabbitmq, context, q, http=True, exclude_unacknowledged=True)
        rate = _source(rabbitmq, context, q, http=True, mode="MessageRate")
        worker = await aio_pika.connect(rabbitmq.amqp_url)
        try:
            channel = await worker.channel()
            queue = await channel.declare_queue(q, durable=True)
            # Two messages in flight: delivered to a worker, not yet acknowledged.
            for _ in range(2):
                assert await queue.get(no_ack=False) is not None
            assert (await amqp.read()).value == 3
            in_flight = await _until(http.read, lambda r: r.value == 5, STATS_WAIT)
            assert in_flight.value == 5, in_flight
            assert (await _until(ready_only.read, lambda r: r.value == 3, STATS_WAIT)).value == 3
            measured = await rate.read()
            assert measured.ok and measured.value is not None and measured.value >= 0
        finally:
            await worker.close()
            for s in (amqp, http, ready_only, rate):
                await s.close()
            await context.aclose()

    asyncio.run(scenario())


def test_deliver_get_rate_reads_deliveries_to_consumers(rabbitmq: RabbitMQServer) -> None:
    # queue-sla learns a replica's service rate from this reading (deliver_get_details.rate).
    async def scenario() -> None:
        context = SourceContext(_env(rabbitmq))
        q = _queue()
        await _publish(rabbitmq, q, 2000)
        delivered = _source(rabbitmq, context, q, http=True, mode="DeliverGetRate")
        published = _source(rabbitmq, context, q, http=True, mode="MessageRate")
        worker = await aio_pika.connect(rabbitmq.amqp_url)
        stop = asyncio.Event()

        async def consume() -> None:
            channel = await worker.channel()
            queue = await channel.declare_queue(q, durable=True)
            while not stop.is_set():
                message = await queue.get(no_ack=True, fail=False)
                await asyncio.sleep(0.02 if message is not None else 0.2)

        task = asyncio.create_task(consume())
        try:
            rate = await _until(delivered.read, lambda r: bool(r.value), 3 * STATS_WAIT)
            assert rate.ok and rate.value is not None and rate.value > 1, rate
            # Nothing was published meanwhile: the arrival rate falls to 0 while deliveries go on.
            assert (await _until(published.read, lambda r: r.value == 0, 3 * STATS_WAIT)).value == 0
        finally:
            stop.set()
            await task
            await worker.close()
            for s in (delivered, published):
                await s.close()
            await context.aclose()

    asyncio.run(scenario())


def test_a_deleted_queue_is_a_failed_reading_not_zero_and_recovers(rabbitmq: RabbitMQServer) -> None:
    async def scenario() -> None:
        context = SourceContext(_env(rabbitmq))
        q = _queue()
        await _publish(rabbitmq, q, 4)
        amqp = _source(rabbitmq, context, q)
        http = _source(rabbitmq, context, q, http=True)
        try:
            assert (await amqp.read()).value == 4
            connection = await aio_pika.connect(rabbitmq.amqp_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(q)
            gone = await amqp.read()
            assert gone.value is None
            assert gone.error is not None and f"queue '{q}' not found" in gone.error
            assert "guest" not in gone.error  # the server is named without credentials
            gone_http = await http.read()
            assert gone_http.value is None and gone_http.error is not None
            assert "not found" in gone_http.error and "guest" not in gone_http.error
            # Re-created: the same source reads it again, on a fresh channel.
            await _publish(rabbitmq, q, 2)
            assert (await amqp.read()).value == 2
        finally:
            await amqp.close()
            await http.close()
            await context.aclose()

    asyncio.run(scenario())


def test_bad_credentials_and_missing_settings_fail_without_leaking_the_password(
    rabbitmq: RabbitMQServer,
) -> None:
    async def scenario() -> None:
        wrong = rabbitmq.amqp_url.replace("guest:guest", "guest:Sup3r-Secret")
        wrong_http = rabbitmq.management_url.replace("guest:guest", "guest:Sup3r-Secret")
        context = SourceContext({"RABBITMQ_URL": wrong, "RABBITMQ_MANAGEMENT_URL": wrong_http})
        amqp = _source(rabbitmq, context, "anything")
        http = _source(rabbitmq, context, "anything", http=True)
        unset = RabbitMQSource(
            "'ns/wl/t'",
            RabbitMQOptions(queue="x", connection_from_env="NOPE"),
            context,
            access=SecretAccess(frozenset({("NOPE", "connectionFromEnv")})),
        )
        try:
            for source in (amqp, http):
                reading = await source.read()
                assert reading.value is None and reading.error is not None
                assert "Sup3r-Secret" not in reading.error
            missing = await unset.read()
            assert missing.error is not None and "NOPE" in missing.error and "not set" in missing.error
        finally:
            for s in (amqp, http, unset):
                await s.close()
            await context.aclose()

    asyncio.run(scenario())


def test_a_stopped_broker_is_a_failed_reading_then_the_same_source_recovers(
    rabbitmq_control: RabbitMQServer,
) -> None:
    server = rabbitmq_control

    async def scenario() -> None:
        context = SourceContext(_env(server))
        q = _queue()
        await _publish(server, q, 6)
        amqp = _source(server, context, q)
        http = _source(server, context, q, http=True)
        try:
            assert (await amqp.read()).value == 6
            await asyncio.to_thread(server.stop)
            down = await amqp.read()
            down_http = await http.read()
            assert down.value is None and down.error is not None, down
            assert down_http.value is None and down_http.error is not None, down_http
            await asyncio.to_thread(server.start)
            # Durable queue and persistent messages survive; the robust connection comes back.
            back = await _until(amqp.read, lambda r: r.ok, 15.0)
            assert back.value == 6, back
            back_http = await _until(http.read, lambda r: r.ok, STATS_WAIT)
            assert back_http.value == 6, back_http
        finally:
            await amqp.close()
            await http.close()
            await context.aclose()

    asyncio.run(scenario())
