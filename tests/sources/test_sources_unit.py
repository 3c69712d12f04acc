"""Source pieces that need no server: redaction, Prometheus result parsing, the builder, options."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from autoscaler.config import load_config
from autoscaler.config.access import SecretAccess
from autoscaler.config.models import RabbitMQOptions
from autoscaler.settings import Settings
from autoscaler.sources import SourceContext, build_source
from autoscaler.sources.base import BrokenSource, redact, secrets_of_url, server_of
from autoscaler.sources.prometheus import PrometheusSource, QueryError, value_of
from autoscaler.sources.rabbitmq import RabbitMQSource, amqp_url_for_vhost
from tests.factories import workload

# ----------------------------------------------------------------------------------------------
# Redaction


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        # userinfo of any URL in a message goes, whatever the scheme
        ("connect amqp://bob:pw@h:5672/v failed", [], "connect amqp://***@h:5672/v failed"),
        ("GET http://u:p@h:15672/api", [], "GET http://***@h:15672/api"),
        # a known secret goes wherever it appears, even outside a URL
        ("auth failed for token abc123xyz", ["abc123xyz"], "auth failed for token ***"),
        # the longer secret first, so no tail of it survives
        ("k=abcdef", ["abc", "abcdef"], "k=***"),
        # nothing to hide: unchanged
        ("queue 'q' not found", ["s3cret"], "queue 'q' not found"),
        # empty secrets are ignored rather than masking every gap
        ("plain", [""], "plain"),
    ],
)
def test_redact(text: str, secrets: list[str], expected: str) -> None:
    assert redact(text, secrets) == expected


def test_server_of_names_the_server_without_credentials() -> None:
    assert server_of("amqp://user:p%40ss@rabbit.svc:5672/prod") == "amqp://rabbit.svc:5672/prod"
    assert server_of("http://prom:9090") == "http://prom:9090"
    assert server_of("amqp://[::1]:5672/") == "amqp://[::1]:5672/"
    assert "pass" not in server_of("https://user:pass@host/?token=x")


def test_secrets_of_url_covers_the_password_and_the_userinfo_in_each_spelling() -> None:
    secrets = secrets_of_url("amqp://u:p%40ss@h/")
    assert {"p%40ss", "p@ss", "u:p%40ss", "u:p@ss"} <= set(secrets)
    assert "u" not in secrets and "h" not in secrets  # the user and host alone are no secret
    assert secrets_of_url("amqp://h/") == []
    # An unencoded '/' or '#' in the password: urlsplit reads no credentials at all, the author's
    # reading (everything up to the last '@') still finds them.
    assert {"pa/ss#x", "u:pa/ss#x"} <= set(secrets_of_url("http://u:pa/ss#x@h:15672"))


def test_amqp_vhost_name_overrides_the_url_path_only_when_set() -> None:
    assert amqp_url_for_vhost("amqp://u:p@h:5672/a", "/") == "amqp://u:p@h:5672/a"
    assert amqp_url_for_vhost("amqp://u:p@h:5672/a", "team/b") == "amqp://u:p@h:5672/team%2Fb"


# ----------------------------------------------------------------------------------------------
# Prometheus results


def _series(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, value]}


@pytest.mark.parametrize(
    ("result", "ignore_null", "expected"),
    [
        ([_series("3.5")], False, 3.5),  # one series: its value
        ([1700000000.0, "2"], False, 2.0),  # a scalar result
        ([], True, 0.0),  # ignoreNullValues: KEDA's empty-is-zero, on request only
    ],
)
def test_value_of(result: Any, ignore_null: bool, expected: float) -> None:
    assert value_of(result, ignore_null) == expected


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ([], "empty result"),  # missing data is never zero by default
        ([_series("1", a="x"), _series("2", a="y")], "2 series"),
        ([_series("NaN")], "NaN"),
        ([_series("+Inf")], r"\+Inf"),
        ([{"metric": {}, "values": [[1, "1"]]}], "not an instant vector"),
        ([_series("abc")], "not a number"),
        ("text", "unexpected result type"),
    ],
)
def test_value_of_refuses(result: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        value_of(result, False)


def test_an_unreachable_prometheus_is_a_failed_reading_naming_query_and_server() -> None:
    from autoscaler.config.models import PrometheusOptions

    source = PrometheusSource(
        "'ns/wl/t'",
        PrometheusOptions(query="up", timeout_seconds=1.0, auth_modes="bearer", token_from_env="T"),
        "http://user:hunter2@127.0.0.1:9",
        environ={"T": "tok-123456"},
        clock=lambda: 7.0,
        access=SecretAccess(frozenset({("T", "tokenFromEnv")}), prometheus_url="http://127.0.0.1:9"),
    )
    reading = asyncio.run(source.read())
    assert reading.value is None and reading.at == 7.0
    assert reading.error is not None
    assert "query 'up'" in reading.error and "http://127.0.0.1:9" in reading.error
    assert "hunter2" not in reading.error and "tok-123456" not in reading.error


def test_a_missing_token_variable_is_a_failed_reading() -> None:
    from autoscaler.config.models import PrometheusOptions

    source = PrometheusSource(
        "'ns/wl/t'",
        PrometheusOptions(query="up", auth_modes="bearer", token_from_env="PROMETHEUS_TOKEN"),
        "http://127.0.0.1:9",
        environ={},
        clock=lambda: 0.0,
        access=SecretAccess(prometheus_url="http://127.0.0.1:9"),
    )
    reading = asyncio.run(source.read())
    assert reading.error is not None and "PROMETHEUS_TOKEN (tokenFromEnv) is not set" in reading.error


# ----------------------------------------------------------------------------------------------
# The builder, fed from a real policy file


POLICY = """
apiVersion: gpu-autoscaler/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: inference}
spec:
  pools: [{deployment: chat-a100, nodeClass: regular, gpuType: A100}]
  triggers:
    - {name: backlog, type: rabbitmq, queues: [a, b], operation: max, vhostName: team,
       connectionFromEnv: MY_AMQP, pollSeconds: 0.5}
    - {name: inflight, type: rabbitmq, queue: a, protocol: http, excludeUnacknowledged: true,
       connectionFromEnv: MY_HTTP}
    - {name: ttft, type: prometheus, query: 'sum(up)', target: 1, timeoutSeconds: 2}
    - {name: ttft2, type: prometheus, query: 'sum(up)', target: 1, serverAddress: 'http://prom:9090'}
"""


def test_build_source_reads_the_yaml_options(tmp_path: Path) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text(POLICY)
    config = load_config([path])
    assert config.ok, config.errors
    (chat,) = config.workloads
    context = SourceContext({}, prometheus_url=None)
    settings = Settings()
    backlog, inflight, ttft, ttft2 = (build_source(chat, t, settings, context=context) for t in chat.triggers)

    assert isinstance(backlog, RabbitMQSource)
    assert backlog.options == RabbitMQOptions(
        queues=["a", "b"], operation="max", vhost_name="team", connection_from_env="MY_AMQP", poll_seconds=0.5
    )
    assert backlog.poll_seconds == 0.5
    assert isinstance(inflight, RabbitMQSource)
    assert inflight.options.protocol == "http" and inflight.options.exclude_unacknowledged
    assert inflight.poll_seconds == 1.0  # RabbitMQ's default
    # No serverAddress and no default: a source that always fails, saying why.
    assert isinstance(ttft, BrokenSource)
    assert "no serverAddress" in ttft.message and "inference/chat/ttft" in ttft.message
    assert isinstance(ttft2, PrometheusSource)
    assert ttft2.poll_seconds == 15.0  # Prometheus' default
    with_default = build_source(
        chat, chat.triggers[2], settings, context=SourceContext({}, prometheus_url="http://p:9090")
    )
    assert isinstance(with_default, PrometheusSource) and with_default.server == "http://p:9090"
    assert with_default.options.timeout_seconds == 2.0


def test_an_unknown_trigger_type_builds_a_source_that_fails() -> None:
    from autoscaler.engine.types import TriggerSpec

    wl = workload("w")
    odd = TriggerSpec(name="x", type="kafka", target=1.0)
    source = build_source(wl, odd, Settings(), context=SourceContext({}, clock=lambda: 3.0))
    reading = asyncio.run(source.read())
    assert reading.value is None and reading.error is not None and "kafka" in reading.error
    assert not math.isnan(reading.at)


def test_a_rabbitmq_trigger_without_its_url_variable_is_a_failed_reading() -> None:
    source = RabbitMQSource("'ns/w/t'", RabbitMQOptions(queue="q"), SourceContext({}))
    reading = asyncio.run(source.read())
    assert (
        reading.error == "trigger 'ns/w/t' (rabbitmq amqp, queue 'q'): environment variable RABBITMQ_URL "
        "(connectionFromEnv) is not set"
    )


def test_http_protocol_needs_an_http_url() -> None:
    source = RabbitMQSource(
        "'ns/w/t'",
        RabbitMQOptions(queue="q", protocol="http"),
        SourceContext({"RABBITMQ_URL": "amqp://u:pw@h/"}),
    )
    reading = asyncio.run(source.read())
    assert (
        reading.error is not None and "http(s) management URL" in reading.error and "pw" not in reading.error
    )
