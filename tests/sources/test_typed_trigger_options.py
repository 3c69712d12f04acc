"""Trigger options are validated once, by the policy-file models, and reach the sources as those
typed objects: no source or simulator parses a mapping of YAML names with defaults of its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from autoscaler.config.models import PrometheusOptions, RabbitMQOptions
from autoscaler.engine.types import TriggerSpec, WorkloadSpec
from autoscaler.live import SourceSet
from autoscaler.settings import Settings
from autoscaler.sim.sources import build_sources
from autoscaler.sources import Source, SourceContext, build_source
from autoscaler.sources.prometheus import PrometheusSource
from autoscaler.sources.rabbitmq import RabbitMQSource
from tests.factories import compiled_trigger, workload

# Only what each type requires: every other option takes its default.
BARE = (
    {"name": "backlog", "type": "rabbitmq", "queue": "a"},
    {
        "name": "ttft",
        "type": "prometheus",
        "query": "sum(up)",
        "target": 1,
        "serverAddress": "http://prom:9090",
    },
)


def _chat(*triggers: dict[str, object]) -> WorkloadSpec:
    """A workload whose triggers are validated and compiled as `load_config` does it."""
    return workload("chat", triggers=tuple(compiled_trigger(**t) for t in triggers))


def _sources(chat: WorkloadSpec) -> list[Source]:
    context = SourceContext({})
    return [build_source(chat, t, Settings(), context=context) for t in chat.triggers]


def test_each_source_is_handed_the_validated_options_object_itself() -> None:
    chat = _chat(*BARE)
    backlog, ttft = _sources(chat)
    assert isinstance(backlog, RabbitMQSource) and isinstance(ttft, PrometheusSource)
    # The very objects the models validated: nothing was parsed again on the way.
    assert backlog.options is chat.triggers[0].options
    assert ttft.options is chat.triggers[1].options


def test_an_omitted_option_reaches_the_source_as_the_models_default() -> None:
    backlog, ttft = _sources(_chat(*BARE))
    assert isinstance(backlog, RabbitMQSource) and isinstance(ttft, PrometheusSource)
    given = {"queue", "query", "server_address"}
    for options in (backlog.options, ttft.options):
        for name, field in type(options).model_fields.items():
            if name not in given:
                assert getattr(options, name) == field.get_default(call_default_factory=True), name
    assert backlog.poll_seconds == RabbitMQOptions.model_fields["poll_seconds"].default
    assert ttft.poll_seconds == PrometheusOptions.model_fields["poll_seconds"].default


def test_the_source_reads_the_values_in_their_validated_form() -> None:
    # snake_case spellings (the models accept both) and integers for seconds, as a person writes them.
    backlog, ttft = _sources(
        _chat(
            {
                "name": "backlog",
                "type": "rabbitmq",
                "queues": ["a", "b"],
                "poll_seconds": 2,
                "vhost_name": "team",
            },
            BARE[1] | {"timeoutSeconds": 3, "custom_headers": {"X-Org": "ml"}},
        )
    )
    assert isinstance(backlog, RabbitMQSource) and isinstance(ttft, PrometheusSource)
    assert backlog.queue_names == ("a", "b") and backlog.options.vhost_name == "team"
    assert backlog.poll_seconds == 2.0 and isinstance(backlog.poll_seconds, float)
    assert ttft.options.timeout_seconds == 3.0 and isinstance(ttft.options.timeout_seconds, float)
    assert ttft.options.custom_headers == {"X-Org": "ml"}


def test_a_mapping_of_yaml_names_is_not_parsed_by_a_source_or_the_simulator() -> None:
    # What TriggerSpec.options used to be: a source that read it would restate every default.
    raw = TriggerSpec("backlog", "rabbitmq", 10.0, options={"queue": "q", "pollSeconds": 0.2})
    with pytest.raises(TypeError, match="carries dict options, not RabbitMQOptions"):
        build_source(workload("chat"), raw, Settings(), context=SourceContext({}))
    with pytest.raises(TypeError, match="carries dict options, not RabbitMQOptions"):
        build_sources([workload("chat", triggers=(raw,))], {"chat": np.zeros(0)})


def test_a_reload_rebuilds_a_source_only_when_its_options_change() -> None:
    built: list[str] = []

    def build(w: WorkloadSpec, t: TriggerSpec, s: Settings, context: SourceContext) -> Source:
        built.append(t.name)
        return build_source(w, t, s, context=context)

    def chat(**options: object) -> WorkloadSpec:
        return workload("chat", triggers=(compiled_trigger(name="backlog", type="rabbitmq", **options),))

    sources = SourceSet(Settings(), SourceContext({}), build)
    first = sources.rebuild([chat(queue="a")])
    # Another target, or a default spelled out: the same source (its connection and reading stay).
    assert sources.rebuild([chat(queue="a", targetPerReplica=5.0)]) == first
    assert sources.rebuild([chat(queue="a", mode="QueueLength", pollSeconds=1.0)]) == first
    # Another queue: a new source.
    assert sources.rebuild([chat(queue="b")]) != first
    assert built == ["backlog", "backlog"]
    asyncio.run(sources.aclose())
