"""The behavior stage: from a policy's recommendation to the units a workload should have now.

`engine.reconcile` calls `decide` once per workload per reconcile, after `policy.recommend` and
before `limits.allocate`. It applies, in this order, what users of the Kubernetes HPA (autoscaling/v2
`behavior`) and KEDA expect: failure counting and fallback, activation and cooldown to zero,
stabilization windows, rate policies, min/max, and "never scale down on partial data". The reasons
it gives end up in `Decision.steps`, so `autoscaler explain` can say which rule bound the value.

The module is pure and synchronous: time is the `now` argument (seconds, never decreasing between
calls for one workload), memory lives in `WorkloadState`, and the same inputs give the same result.
It runs for every workload on every full reconcile (10,000 workloads within the engine's ~100 ms), so
the common path allocates only the new state, its recommendation tuple and the result; the
incremental engine runs it again only when the workload's inputs change or its `wake_at` comes.

`legacy_hpa_scale_up_limit` is the HPA's older, pre-`behavior` scale-up cap, kept for the `keda-hpa`
baseline of the simulator, which also runs the HPA's windows and rate policies on pods through the
public names of the rules below (`stabilize`, `scale_up_limit`, `scale_down_limit`), one
implementation of those semantics for both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from autoscaler.engine.types import (
    FallbackBehavior,
    Frozen,
    RateKind,
    RatePolicy,
    ScalingRules,
    SelectPolicy,
    WorkloadSpec,
    WorkloadState,
)

__all__ = [
    "BehaviorInput",
    "BehaviorResult",
    "decide",
    "legacy_hpa_scale_up_limit",
    "scale_down_limit",
    "scale_up_limit",
    "stabilize",
]

# A recommendation such as 3.0000000000000004 (float noise from usage/target) must mean 3, not 4.
_CEIL_SLACK = 1e-9
# What a direction without rate policies allows: anything (min/max still apply).
_NO_LIMIT = 1 << 62
# `BehaviorResult.wake_at` of a result only a change of input can move.
_SETTLED = math.inf
# `decide`'s default: the new state carries the policy memory of the state it was given.
_KEEP_MEMORY: object = object()


@dataclass(frozen=True, slots=True)
class BehaviorInput(Frozen):
    """What the behavior stage needs to know about one workload at one reconcile."""

    # The policy's recommendation in replica units; None = it cannot tell (its inputs failed).
    recommended_units: float | None
    # Some valid trigger reading is above its activation threshold.
    active: bool
    # Triggers whose reading failed this time (missing or error).
    failed_triggers: frozenset[str]
    # Replica units the pools are asked for now.
    current: int
    # `Reading.at` of each failed trigger's reading, when there was one: a failed reading already
    # counted at an earlier reconcile is not counted again.
    failed_at: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BehaviorResult(Frozen):
    desired: int
    state: WorkloadState
    # One human-readable reason per rule that changed or held the value; empty when none did.
    steps: tuple[str, ...]
    # The fallback decided (a trigger failed `failureThreshold` times in a row), not the policy.
    fallback: bool = False
    # Until when the same input (and this state) would give the same result and a state that a call
    # at any later time before it would reproduce (see `Recommendation.wake_at`, the same promise):
    # None, not even at the next reconcile; math.inf, until the input changes. What can move a
    # settled result with time alone: an older recommendation leaving a stabilization window, a
    # scale event leaving a rate period, the cooldown running out.
    wake_at: float | None = None

    # Its own `__init__`, not the generated one: built for every workload at every reconcile
    # (see `engine.types.Frozen`).
    def __init__(
        self,
        desired: int,
        state: WorkloadState,
        steps: tuple[str, ...],
        fallback: bool = False,
        wake_at: float | None = None,
    ) -> None:
        object.__setattr__(self, "desired", desired)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "fallback", fallback)
        object.__setattr__(self, "wake_at", wake_at)


def legacy_hpa_scale_up_limit(current: int) -> int:
    """The most replicas one HPA sync may scale up to when the HPA has no `spec.behavior`.

    That older controller path (scale-up factor 2, minimum 4) is what an HPA created by KEDA takes
    unless the ScaledObject sets `advanced.horizontalPodAutoscalerConfig.behavior`; so 1 -> 4, not the
    1 -> 5 of the default `behavior`. Used by the simulator's `keda-hpa` baseline, not by `decide`.
    """
    return max(2 * current, 4)


def decide(
    spec: WorkloadSpec,
    state: WorkloadState,
    inp: BehaviorInput,
    now: float,
    policy_memory: object = _KEEP_MEMORY,
) -> BehaviorResult:
    """Settle the units `spec`'s workload should have at `now`; see the module docstring.
    `policy_memory`: the policy memory the new state carries, when not `state`'s (the engine gives
    the one the policy just returned, rather than build the state a second time to put it in)."""
    memory = state.policy_memory if policy_memory is _KEEP_MEMORY else policy_memory
    current = inp.current
    failed = inp.failed_triggers
    if failed or state.failures:
        failures, seen = _count_failures(spec, state.failures, failed, inp.failed_at, state.failure_seen)
        if seen != state.failure_seen:
            state = replace(state, failure_seen=seen)  # rare: only while triggers fail
    else:
        failures = state.failures

    if failed:
        fallback = spec.fallback
        # A threshold below 1 would put a workload whose triggers all work into fallback.
        threshold = max(fallback.failure_threshold, 1)
        tripped = sorted(t for t in failed if failures.get(t, 0) >= threshold)
        if tripped:
            return _fallback(spec, state, now, current, failures=failures, tripped=tripped, memory=memory)

    # KEDA's activity clock. A workload never seen active has its cooldown counted from the first
    # time the engine saw it running, so one found idle after a restart goes to zero, but not at once.
    last_active = state.last_active
    if inp.active or (last_active is None and current > 0):
        last_active = now

    rec = inp.recommended_units
    if rec is None or not math.isfinite(rec):
        # Missing data is never read as zero: hold. Only KEDA's own 0 -> 1 on a valid active reading
        # still happens, as it needs no metric; otherwise work would wait at zero for as long as some
        # other source is down.
        why = "gave no recommendation" if rec is None else f"gave {rec}, not a number of units"
        result = _clamp(current, spec)
        if inp.active and result == 0 and spec.max_replicas > 0:
            result = 1
            step = f"policy {why}; active: scaling from 0 to 1"
        else:
            step = f"policy {why}: holding {result}"
        return _finish(
            spec,
            state,
            now,
            current,
            result,
            steps=(step,),
            failures=failures,
            last_active=last_active,
            memory=memory,
            wake_at=_SETTLED if result == current and not failed else None,
        )

    raw = max(math.ceil(rec - _CEIL_SLACK), 0)
    steps: list[str] = []
    behavior = spec.behavior

    if behavior.passthrough or getattr(spec.policy, "owns_behavior", False):
        # The policy carries its own scaling rules (the KEDA/HPA and Knative baselines emulate their
        # controllers, sync periods included): take its answer as it is, within the guards below.
        result = _guard(spec, failed, current, raw, steps)
        return _finish(
            spec,
            state,
            now,
            current,
            result,
            steps=tuple(steps),
            failures=failures,
            last_active=last_active,
            memory=memory,
            wake_at=_SETTLED if result == current and not failed else None,
        )

    # The earliest time alone changes the result (see BehaviorResult.wake_at).
    wake_at = _SETTLED
    # Activation and cooldown only choose between zero and one; with a minimum above zero they never
    # matter (KEDA leaves such a workload to the HPA).
    if spec.min_replicas == 0:
        if inp.active:
            if raw < 1:
                raw = 1
                steps.append("active: at least 1")
        elif current == 0:
            step = "below activation: staying at 0"
            return _finish(
                spec,
                state,
                now,
                0,
                0,
                steps=(step,),
                failures=failures,
                last_active=last_active,
                memory=memory,
                wake_at=None if failed else _SETTLED,
            )
        else:
            assert last_active is not None  # set above whenever current > 0
            idle = now - last_active
            cooldown = behavior.cooldown_seconds
            if idle >= cooldown and not failed:
                # KEDA takes 1 -> 0 itself, past the HPA's stabilization and rate policies.
                step = f"cooldown to zero after {idle:g}s idle (cooldown {cooldown:g}s)"
                return _finish(
                    spec,
                    state,
                    now,
                    current,
                    0,
                    steps=(step,),
                    failures=failures,
                    last_active=last_active,
                    memory=memory,
                )
            if raw < 1:
                raw = 1
                if idle >= cooldown:
                    # KEDA, too, goes to zero only when every scaler answered: a failed one might be
                    # the one with work.
                    steps.append(
                        f"idle {idle:g}s but trigger(s) {', '.join(sorted(failed))} failed:"
                        " not going to zero on partial data"
                    )
                else:
                    steps.append(f"cooling down: idle {idle:g}s of {cooldown:g}s, keeping 1")
            if idle < cooldown:
                wake_at = last_active + cooldown

    # Capping at maxReplicas first changes no outcome (min and max commute with the cap, and the cap
    # is applied at the end anyway) but bounds the values, and with them the recommendation tuple.
    raw = min(raw, spec.max_replicas)

    # Stabilization (HPA): scale up to the lowest recommendation of the scale-up window, down to the
    # highest of the scale-down window. Entries that can no longer be a window's min or max are
    # dropped (see _stabilize), which keeps the tuple short however often reconcile runs.
    up_rules = behavior.scale_up
    down_rules = behavior.scale_down
    previous = state.recommendations
    if not previous and current > 0:
        # First sight: as the HPA's recordInitialRecommendation does, count the replicas found running
        # as a recommendation made now, so a restarted engine does not scale down at once.
        previous = ((now, min(current, spec.max_replicas)),)
    recommendations, up_rec, down_rec = _stabilize(
        previous, now, raw, up_rules.stabilization_seconds, down_rules.stabilization_seconds
    )
    result = min(max(current, up_rec), down_rec)
    if len(recommendations) > 1:
        wake_at = min(wake_at, _window_exit(recommendations, now, up_rules, down_rules))
    # Only a scale-down can be held above raw, only a scale-up below it.
    if result > raw:
        steps.append(
            f"scale-down held at {result} by the {down_rules.stabilization_seconds:g}s stabilization"
            f" window (highest recommendation {down_rec})"
        )
    elif result < raw:
        steps.append(
            f"scale-up held at {result} by the {up_rules.stabilization_seconds:g}s stabilization"
            f" window (lowest recommendation {up_rec})"
        )

    # Rate policies over their periods.
    if result != current:
        if result > current:
            limit, step = _limit_up(up_rules, state.scale_events, current, now)
            if result > limit:
                result = limit
                steps.append(f"scale-up {step}")
        else:
            limit, step = _limit_down(down_rules, state.scale_events, current, now)
            if result < limit:
                result = limit
                steps.append(f"scale-down {step}")
        # Held by the rate policies (or clamped back below): until an event leaves its period.
        wake_at = min(wake_at, _period_exit(spec, state.scale_events, now))

    result = _guard(spec, failed, current, result, steps)
    return _finish(
        spec,
        state,
        now,
        current,
        result,
        steps=tuple(steps) if steps else (),
        failures=failures,
        last_active=last_active,
        memory=memory,
        recommendations=recommendations,
        wake_at=wake_at if result == current and not failed else None,
    )


# ----------------------------------------------------------------------------------------------
# The rules, one function each


def _count_failures(
    spec: WorkloadSpec,
    previous: Mapping[str, int],
    failed: frozenset[str],
    failed_at: Mapping[str, float],
    seen: Mapping[str, float],
) -> tuple[Mapping[str, int], Mapping[str, float]]:
    """Consecutive failures of this workload's triggers, and the reading time each last count came
    from. Only non-zero counts are stored (absent means 0). A failed reading with the same `at` as
    the one last counted is the same failed poll seen by another reconcile: it keeps the count."""
    if not failed:
        return (previous if not any(previous.values()) else {}), ({} if seen else seen)
    counts: dict[str, int] = {}
    new_seen: dict[str, float] = {}
    for trigger in spec.triggers:
        name = trigger.name
        if name in failed:
            # Names that are not the workload's triggers are ignored: they cannot trip its fallback.
            at = failed_at.get(name)
            repeated = at is not None and seen.get(name) == at and name in previous
            counts[name] = previous.get(name, 0) + (0 if repeated else 1)
            if at is not None:
                new_seen[name] = at
    return counts, new_seen


def _fallback(
    spec: WorkloadSpec,
    state: WorkloadState,
    now: float,
    current: int,
    *,
    failures: Mapping[str, int],
    tripped: list[str],
    memory: object,
) -> BehaviorResult:
    fallback = spec.fallback
    if fallback.behavior is FallbackBehavior.STATIC:
        target = fallback.replicas
    elif fallback.behavior is FallbackBehavior.CURRENT_IF_HIGHER:
        target = max(current, fallback.replicas)
    else:
        target = current
    result = _clamp(target, spec)
    counts = ", ".join(f"{name} failed {failures[name]} times" for name in tripped)
    step = (
        f"trigger {counts} in a row (threshold {fallback.failure_threshold}):"
        f" fallback {fallback.behavior.value} -> {result}"
    )
    # Nothing trustworthy was recommended, so nothing is recorded for the stabilization windows, and
    # the activity clock stands still.
    still = state.last_active
    finished = _finish(
        spec, state, now, current, result, steps=(step,), failures=failures, last_active=still, memory=memory
    )
    return replace(finished, fallback=True)


def _stabilize(
    previous: tuple[tuple[float, int], ...], now: float, raw: int, up_window: float, down_window: float
) -> tuple[tuple[tuple[float, int], ...], int, int]:
    """Record `raw` at `now` and return (recommendations, upRec, downRec).

    upRec is the min and downRec the max of the recommendations with t > now - window, this one
    included, as in the HPA. An older entry whose value lies within [min, max] of the newer ones can
    never be a window's min or max again (any window holding it holds the newer ones too), so only
    entries that extend that range are kept, besides those older than the longer window going away.
    With values capped at maxReplicas, the tuple holds at most maxReplicas + 1 entries.
    """
    if len(previous) == 1 and previous[0][1] == raw:
        # The steady state, worth its shortcut: the new entry supersedes the only old one.
        return ((now, raw),), raw, raw
    up_cut = now - up_window
    down_cut = now - down_window
    keep_cut = min(up_cut, down_cut)
    up_rec = down_rec = low = high = raw
    kept = [(now, raw)]
    # Newest first; entries are in time order, so the first one past the longer window ends it.
    for i in range(len(previous) - 1, -1, -1):
        entry = previous[i]
        t, value = entry
        if t <= keep_cut:
            break
        if t > up_cut and value < up_rec:
            up_rec = value
        if t > down_cut and value > down_rec:
            down_rec = value
        if value > high:
            high = value
            kept.append(entry)
        elif value < low:
            low = value
            kept.append(entry)
    kept.reverse()
    return tuple(kept), up_rec, down_rec


def _limit_up(
    rules: ScalingRules, events: tuple[tuple[float, int], ...], current: int, now: float
) -> tuple[int, str]:
    """The most units the scale-up rate policies allow now, and why."""
    if rules.select is SelectPolicy.DISABLED:
        return current, f"disabled (selectPolicy Disabled): staying at {current}"
    if not rules.policies:
        return _NO_LIMIT, ""
    pick_max = rules.select is SelectPolicy.MAX
    limit = 0
    chosen = rules.policies[0]
    for n, policy in enumerate(rules.policies):
        cut = now - policy.period_seconds
        added = 0
        for t, delta in events:
            if t > cut and delta > 0:
                added += delta
        start = current - added
        if policy.kind is RateKind.PODS:
            proposed = start + policy.value
        else:
            # Rounded up so that a small Percent still allows one more replica (as the HPA does).
            proposed = math.ceil(start * (1 + policy.value / 100))
        if n == 0 or (proposed > limit if pick_max else proposed < limit):
            limit, chosen = proposed, policy
    # Events beyond the period's allowance must not turn a scale-up into a scale-down (HPA too).
    limit = max(limit, current)
    return limit, f"limited to {limit} by {_describe(chosen)}"


def _limit_down(
    rules: ScalingRules, events: tuple[tuple[float, int], ...], current: int, now: float
) -> tuple[int, str]:
    """The fewest units the scale-down rate policies allow now, and why."""
    if rules.select is SelectPolicy.DISABLED:
        return current, f"disabled (selectPolicy Disabled): staying at {current}"
    if not rules.policies:
        return -_NO_LIMIT, ""
    # Max means the largest change, which for a scale-down is the smallest limit.
    pick_lowest = rules.select is SelectPolicy.MAX
    limit = 0
    chosen = rules.policies[0]
    for n, policy in enumerate(rules.policies):
        cut = now - policy.period_seconds
        removed = 0
        for t, delta in events:
            if t > cut and delta < 0:
                removed -= delta
        start = current + removed
        if policy.kind is RateKind.PODS:
            proposed = start - policy.value
        else:
            # int() truncates toward zero, as the HPA's int32 conversion does.
            proposed = int(start * (1 - policy.value / 100))
        if n == 0 or (proposed < limit if pick_lowest else proposed > limit):
            limit, chosen = proposed, policy
    limit = min(limit, current)
    return limit, f"limited to {limit} by {_describe(chosen)}"


def _describe(policy: RatePolicy) -> str:
    amount = f"{policy.value}%" if policy.kind is RateKind.PERCENT else str(policy.value)
    return f"{policy.kind.value} policy ({amount} per {policy.period_seconds:g}s)"


def _guard(spec: WorkloadSpec, failed: frozenset[str], current: int, result: int, steps: list[str]) -> int:
    """The last word on every recommendation: no scale-down on partial data, then min and max."""
    # HPA ignores an invalid metric unless the valid ones ask for more: a trigger that failed this
    # time can only add, never remove, replicas. maxReplicas still wins, clamped below.
    if failed and result < current:
        names = ", ".join(sorted(failed))
        steps.append(f"trigger(s) {names} failed: not scaling down on partial data, holding {current}")
        result = current
    if result > spec.max_replicas:
        result = spec.max_replicas
        steps.append(f"clamped to maxReplicas {result}")
    if result < spec.min_replicas:
        result = spec.min_replicas
        steps.append(f"clamped to minReplicas {result}")
    return result


def _window_exit(
    recommendations: tuple[tuple[float, int], ...], now: float, up: ScalingRules, down: ScalingRules
) -> float:
    """The first time an entry older than this reconcile's leaves a stabilization window (the one
    recorded now is recorded again at every later reconcile, and stays)."""
    first = math.inf
    for t, _ in recommendations[:-1]:
        for exit_at in (t + up.stabilization_seconds, t + down.stabilization_seconds):
            if now < exit_at < first:
                first = exit_at
    return first


def _period_exit(spec: WorkloadSpec, events: tuple[tuple[float, int], ...], now: float) -> float:
    """The first time a scale event leaves the period of a rate policy (either direction's)."""
    behavior = spec.behavior
    first = math.inf
    for policy in (*behavior.scale_up.policies, *behavior.scale_down.policies):
        for t, _ in events:
            exit_at = t + policy.period_seconds
            if now < exit_at < first:
                first = exit_at
    return first


def _clamp(units: int, spec: WorkloadSpec) -> int:
    # max() last: a spec whose min exceeds its max is a config error, and min wins so nothing the
    # workload was promised disappears.
    return max(min(units, spec.max_replicas), spec.min_replicas)


def _finish(
    spec: WorkloadSpec,
    state: WorkloadState,
    now: float,
    current: int,
    result: int,
    *,
    steps: tuple[str, ...],
    failures: Mapping[str, int],
    last_active: float | None,
    memory: object,
    recommendations: tuple[tuple[float, int], ...] | None = None,
    wake_at: float | None = None,
) -> BehaviorResult:
    """Record the scale event, prune the old ones and build the next state. `recommendations` None:
    this call recorded none, the previous ones stay."""
    events = state.scale_events
    if result != current or events:
        events = _record_event(spec, events, now, result - current)
    # Positional and complete (a test pins WorkloadState's fields): dataclasses.replace costs twice as
    # much, and this runs for every workload on every reconcile.
    new_state = WorkloadState(
        state.recommendations if recommendations is None else recommendations,
        events,
        last_active,
        failures,
        memory,
        state.blocked_until,
        result,
        state.failure_seen,
    )
    return BehaviorResult(result, new_state, steps, False, wake_at)


def _record_event(
    spec: WorkloadSpec, events: tuple[tuple[float, int], ...], now: float, delta: int
) -> tuple[tuple[float, int], ...]:
    """Append (now, delta) unless 0, after dropping what no rate policy's period still covers."""
    behavior = spec.behavior
    longest = 0.0
    for policy in behavior.scale_up.policies:
        longest = max(longest, policy.period_seconds)
    for policy in behavior.scale_down.policies:
        longest = max(longest, policy.period_seconds)
    cut = now - longest
    # Events are in time order: drop the expired prefix; the tuple is reused when nothing expired.
    first = 0
    while first < len(events) and events[first][0] <= cut:
        first += 1
    if first:
        events = events[first:]
    if delta:
        events = (*events, (now, delta))
    return events


# The same rules for the `keda-hpa` baseline, which applies them to pods at each HPA sync.
stabilize = _stabilize
scale_up_limit = _limit_up
scale_down_limit = _limit_down
