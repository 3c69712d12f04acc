"""Live signal sources: one per trigger, built by an explicit builder (KEDA style, no discovery).

`build_source(workload, trigger, settings, context=...)` returns a `Source` whose `read()` reports
the trigger's current value as a `Reading`. A trigger that cannot be read as configured (an unknown
type, a Prometheus trigger with no server address anywhere) still gets a source: a `BrokenSource`
that reports the same failure on every poll, so the workload's fallback applies and every other
workload keeps scaling. Callers: `autoscaler.controller` and `autoscaler run`.

Adding a source type: a module here with a builder function, and one line in `_BUILDERS` (keep it
alphabetical).
"""

from __future__ import annotations

from collections.abc import Callable

from autoscaler.config.access import SecretAccess
from autoscaler.config.compile import trigger_options
from autoscaler.config.models import PrometheusOptions, RabbitMQOptions
from autoscaler.engine.types import TriggerSpec, WorkloadSpec
from autoscaler.settings import Settings
from autoscaler.sources.base import BrokenSource, Source, SourceContext, redact, server_of

__all__ = ["BrokenSource", "Source", "SourceContext", "build_source", "redact", "server_of", "trigger_label"]


def trigger_label(workload: WorkloadSpec, trigger: TriggerSpec) -> str:
    """How messages name a trigger: `namespace/workload/trigger`."""
    return f"'{workload.namespace}/{workload.name}/{trigger.name}'"


def _build_prometheus(
    workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
) -> Source:
    from autoscaler.sources.prometheus import PrometheusSource

    options = trigger_options(trigger, PrometheusOptions)
    server = options.server_address or context.prometheus_url
    label = trigger_label(workload, trigger)
    if not server:
        return BrokenSource(
            f"trigger {label} (prometheus query '{options.query}'): no serverAddress on the trigger "
            "and no default Prometheus address configured",
            context.clock,
        )
    return PrometheusSource(
        label, options, server, context.environ, context.clock, access=SecretAccess.from_settings(settings)
    )


def _build_rabbitmq(
    workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, context: SourceContext
) -> Source:
    from autoscaler.sources.rabbitmq import RabbitMQSource

    return RabbitMQSource(
        trigger_label(workload, trigger),
        trigger_options(trigger, RabbitMQOptions),
        context,
        access=SecretAccess.from_settings(settings),
    )


_Builder = Callable[[WorkloadSpec, TriggerSpec, Settings, SourceContext], Source]
_BUILDERS: dict[str, _Builder] = {
    "prometheus": _build_prometheus,
    "rabbitmq": _build_rabbitmq,
}


def build_source(
    workload: WorkloadSpec, trigger: TriggerSpec, settings: Settings, *, context: SourceContext
) -> Source:
    """The source for one trigger. `context` is shared by all sources of one controller (connections,
    environment, clock); close it with `context.aclose()` after closing the sources."""
    builder = _BUILDERS.get(trigger.type)
    if builder is None:
        known = ", ".join(sorted(_BUILDERS))
        return BrokenSource(
            f"trigger {trigger_label(workload, trigger)}: no live source for type '{trigger.type}' "
            f"(known: {known})",
            context.clock,
        )
    return builder(workload, trigger, settings, context)
