"""Session fixtures that start a real RabbitMQ (with the management plugin) and a real Prometheus on
loopback, one of each per test session, shared by the integration and end-to-end tests. They are
started lazily: a run that needs neither (tests/engine alone, say) starts no server.

Tests skip only when the server binaries are missing and `CI` is unset; in CI (`CI` set) a missing
binary is a failure, since `.ci/run` installs them. Tests that stop a server (recovery tests) use
the function-level `*_control` fixtures, which start it again afterwards if the test did not, so
later tests always find the servers running.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import PrometheusServer, RabbitMQServer, backfilled_prometheus, need

# Backfilled samples sit an hour back (inside the default 15-day retention); queries pin `time` to
# just after them, well within Prometheus' 5-minute lookback.
BACKFILL_AT = int(time.time()) - 3600
QUERY_AT = str(BACKFILL_AT + 30)
BACKFILL = f"""# TYPE autoscaler_test_backlog gauge
autoscaler_test_backlog{{queue="chat"}} 42.5 {BACKFILL_AT}
autoscaler_test_backlog{{queue="batch"}} 7 {BACKFILL_AT}
# EOF
"""


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    need("rabbitmq")
    base = Path(tempfile.mkdtemp(prefix="autoscaler-rabbitmq-"))
    server = RabbitMQServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def rabbitmq_control(rabbitmq: RabbitMQServer) -> Iterator[RabbitMQServer]:
    """The session broker, for a test that stops and starts it; running again after the test."""
    yield rabbitmq
    if rabbitmq.process is None:
        rabbitmq.start()


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    with backfilled_prometheus(BACKFILL) as server:
        yield server


@pytest.fixture
def prometheus_control(prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    yield prometheus
    if prometheus.process is None:
        prometheus.start()
