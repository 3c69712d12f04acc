"""A broker outage against the real rabbitmq-server: the trigger reads again soon after the broker is
back (not at the end of the controller's backoff), and aiormq's once-a-second reconnect errors reach
the log once, not once a second."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid

from autoscaler.backoff import Backoff
from autoscaler.controller import Controller, TriggerKey
from autoscaler.dryrun import DryRunCluster
from autoscaler.engine.types import Limits
from autoscaler.logs import configure_logging
from autoscaler.settings import Settings
from autoscaler.sources import SourceContext, build_source
from tests.eventually import eventually
from tests.factories import compiled_trigger, workload
from tests.integration.servers import RabbitMQServer
from tests.integration.test_rabbitmq_source import _publish

# Longer than any test should wait: a trigger that recovers only when its backoff runs out fails.
BACKOFF = Backoff(base_seconds=60.0, cap_seconds=60.0, jitter=0.0)


def test_the_trigger_reads_again_soon_after_the_broker_returns(rabbitmq_control: RabbitMQServer) -> None:
    server = rabbitmq_control
    queue = f"q-{uuid.uuid4().hex[:8]}"
    trigger = compiled_trigger(
        name="backlog", type="rabbitmq", targetPerReplica=10.0, queue=queue, pollSeconds=0.2
    )
    chat = workload("chat", triggers=(trigger,))
    stream = io.StringIO()
    handler = configure_logging("text", logging.INFO)
    handler.setStream(stream)  # type: ignore[attr-defined]
    # Every record the client libraries make, before our handler's filter: the count to thin out.
    raw: list[logging.LogRecord] = []
    counter = logging.Handler()
    counter.emit = raw.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(counter)

    async def scenario() -> float:
        await _publish(server, queue, 3)
        context = SourceContext({"RABBITMQ_URL": server.amqp_url})
        source = build_source(chat, trigger, Settings(), context=context)
        cluster = DryRunCluster([chat])
        controller = Controller(
            [chat], Limits(), {TriggerKey("chat", "backlog"): source}, cluster, cluster, backoff=BACKOFF
        )
        task = asyncio.create_task(controller.run())

        def latest() -> float | None:
            reading = controller.readings["chat"].get("backlog")
            return reading.value if reading is not None else None

        try:
            await eventually(lambda: latest() is not None, 15.0, "the first reading")
            await asyncio.to_thread(server.stop)
            await eventually(lambda: latest() is None, 15.0, "the failed reading")
            # Down for a while: aio-pika's robust connection retries (and aiormq logs) every second.
            await asyncio.sleep(5.0)
            await asyncio.to_thread(server.start)
            return await eventually(
                lambda: latest() is not None, 15.0, "a reading after the broker came back"
            )
        finally:
            controller.stop()
            await task
            await source.close()
            await context.aclose()

    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().removeHandler(counter)
        logging.getLogger().setLevel(logging.WARNING)
    transport = "error when creating transport"
    raw_errors = [r for r in raw if r.name.startswith("aiormq") and str(r.msg).startswith(transport)]
    assert len(raw_errors) >= 3, "the outage was too short to show the thinning"
    assert stream.getvalue().count(transport) == 1, stream.getvalue()
