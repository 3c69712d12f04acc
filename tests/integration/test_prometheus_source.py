"""The Prometheus source against a real Prometheus serving a backfilled series (promtool)."""

from __future__ import annotations

import asyncio
import time

from autoscaler.config.access import SecretAccess
from autoscaler.config.models import PrometheusOptions
from autoscaler.sources.prometheus import PrometheusSource
from tests.conftest import QUERY_AT
from tests.integration.servers import PrometheusServer


def _source(
    server: PrometheusServer, query: str, *, at: str | None = QUERY_AT, **options: object
) -> PrometheusSource:
    return PrometheusSource(
        "'ns/wl/ttft'",
        PrometheusOptions(query=query, timeout_seconds=2.0, **options),  # type: ignore[arg-type]
        server.url,
        environ={"PROM_TOKEN": "tok-Very-Secret-123"},
        clock=time.monotonic,
        query_params={"time": at} if at else None,
        # The operator's settings would say so: this token, as a token, to this Prometheus.
        access=SecretAccess(frozenset({("PROM_TOKEN", "tokenFromEnv")}), prometheus_url=server.url),
    )


def _read(source: PrometheusSource) -> tuple[float | None, str | None]:
    async def go() -> tuple[float | None, str | None]:
        try:
            reading = await source.read()
            return reading.value, reading.error
        finally:
            await source.close()

    return asyncio.run(go())


def test_a_backfilled_series_reads_exactly(prometheus: PrometheusServer) -> None:
    assert _read(_source(prometheus, 'autoscaler_test_backlog{queue="chat"}')) == (42.5, None)
    # Aggregations and scalars are one value too.
    assert _read(_source(prometheus, "sum(autoscaler_test_backlog)")) == (49.5, None)
    assert _read(_source(prometheus, "scalar(max(autoscaler_test_backlog))")) == (42.5, None)


def test_bearer_auth_and_custom_headers_are_sent_and_never_echoed(prometheus: PrometheusServer) -> None:
    # Prometheus ignores the headers; what matters is that the query still works with them and
    # that a failure does not print the token.
    ok = _source(
        prometheus,
        'autoscaler_test_backlog{queue="batch"}',
        auth_modes="bearer",
        token_from_env="PROM_TOKEN",
        custom_headers={"X-Scope-OrgID": "tenant-1"},
    )
    assert _read(ok) == (7.0, None)
    broken = _source(prometheus, "sum(", auth_modes="bearer", token_from_env="PROM_TOKEN")
    value, error = _read(broken)
    assert value is None and error is not None
    assert "tok-Very-Secret-123" not in error and "400" in error


def test_more_than_one_series_is_an_error(prometheus: PrometheusServer) -> None:
    value, error = _read(_source(prometheus, "autoscaler_test_backlog"))
    assert value is None
    assert error is not None and "2 series" in error and "autoscaler_test_backlog" in error


def test_an_empty_result_is_an_error_unless_ignore_null_values(prometheus: PrometheusServer) -> None:
    query = 'autoscaler_test_backlog{queue="nope"}'
    value, error = _read(_source(prometheus, query))
    assert value is None and error is not None and "empty result" in error
    assert _read(_source(prometheus, query, ignore_null_values=True)) == (0.0, None)


def test_nan_is_an_error(prometheus: PrometheusServer) -> None:
    value, error = _read(_source(prometheus, "vector(0) / 0"))
    assert value is None and error is not None and "NaN" in error


def test_a_stopped_prometheus_is_a_failed_reading_then_the_same_source_recovers(
    prometheus_control: PrometheusServer,
) -> None:
    source = _source(prometheus_control, 'autoscaler_test_backlog{queue="chat"}')

    async def scenario() -> None:
        try:
            assert (await source.read()).value == 42.5
            await asyncio.to_thread(prometheus_control.stop)
            down = await source.read()
            assert down.value is None and down.error is not None
            assert prometheus_control.url.removeprefix("http://") in down.error
            await asyncio.to_thread(prometheus_control.start)
            back = await source.read()
            assert back.value == 42.5, back  # the backfilled block survives the restart
        finally:
            await source.close()

    asyncio.run(scenario())
