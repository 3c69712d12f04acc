"""Baselines: policies that emulate the controllers we measure ourselves against.

`keda-hpa` (a KEDA ScaledObject driving an HPA: its defaults, or the triggers, polling, cached
metrics and HPA behavior an expert sets), `knative-kpa` (Knative's KPA) and `static` (a fixed size,
the simulator's `static-peak`). KEDA, the HPA and Knative count pods, not capacity units; `_pods`
converts. Each is an ordinary policy of the
registry, so a policy file may name one, but their purpose is the simulator's comparison
(`sim.presets`, `autoscaler simulate --policy`): they run in the same simulated cluster, with the same
pools, spill-over and caps as our own policies, so only the decision logic differs. Each sets
`owns_behavior`, since it carries its controller's own sync periods, windows and rate limits and the
engine's behavior stage must not smooth it a second time. All three are pure: time is `ctx.now`,
state lives in `Recommendation.memory` as a frozen value.
"""

from __future__ import annotations

from autoscaler.policies.baselines.keda_hpa import KedaHpaOptions, KedaHpaPolicy
from autoscaler.policies.baselines.knative_kpa import KnativeKpaOptions, KnativeKpaPolicy
from autoscaler.policies.baselines.static import StaticOptions, StaticPolicy

__all__ = [
    "KedaHpaOptions",
    "KedaHpaPolicy",
    "KnativeKpaOptions",
    "KnativeKpaPolicy",
    "StaticOptions",
    "StaticPolicy",
]
