"""The engine state codec (`engine.statecodec`): what a leader writes into its Lease and a new leader
reads back. A round trip gives the same state; a replica that adopts the state decides exactly as
the leader would; corrupt or foreign text starts fresh with a note, never an exception; the text
stays small and shrinks further when it must."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.engine import compiled
from autoscaler.engine.policy import PolicyContext, Recommendation
from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.statecodec import (
    FORMAT_VERSION,
    Detail,
    decode_text,
    dump_state,
    encode_text,
    load_state,
    pack_state,
    unpack_state,
)
from autoscaler.engine.types import (
    BehaviorSpec,
    ClusterSnapshot,
    EngineState,
    Limits,
    PoolStatus,
    RateKind,
    RatePolicy,
    Reading,
    ScalingRules,
    WorkloadSpec,
    WorkloadState,
)
from autoscaler.policies import queue_sla
from autoscaler.policies.baselines import KedaHpaOptions, KedaHpaPolicy, KnativeKpaOptions, KnativeKpaPolicy
from autoscaler.policies.baselines.keda_hpa import KedaHpaMemory
from autoscaler.policies.baselines.knative_kpa import KnativeKpaMemory
from autoscaler.policies.queue_sla import QueueSlaOptions, QueueSlaPolicy
from tests.factories import pool, trigger, workload

NOW = 1_750_000_000.0  # the live engine runs on wall-clock seconds
HPA_LIKE = BehaviorSpec(
    scale_up=ScalingRules(60.0, (RatePolicy(RateKind.PODS, 4, 15.0),)),
    scale_down=ScalingRules(300.0, (RatePolicy(RateKind.PERCENT, 50, 60.0),)),
    cooldown_seconds=120.0,
)
SLA = QueueSlaPolicy(QueueSlaOptions(serviceRatePerReplica=2.0, rateTrigger="rate", holdSeconds=600))
SLA_WL = workload(
    "chat",
    (pool("chat-a100", max_replicas=3), pool("chat-salad", virtual=True, thr=0.5, timeout=120)),
    triggers=(trigger("backlog"), trigger("rate")),
    policy=SLA,
    behavior=HPA_LIKE,
)
TARGET_WL = workload("batch", triggers=(trigger("q"), trigger("lat")), behavior=HPA_LIKE)
KEDA_WL = workload("keda", policy=KedaHpaPolicy(KedaHpaOptions()), behavior=HPA_LIKE)
KPA_WL = workload("kpa", policy=KnativeKpaPolicy(KnativeKpaOptions()), behavior=HPA_LIKE)
WORKLOADS = (SLA_WL, TARGET_WL, KEDA_WL, KPA_WL)


def round_trip(state: EngineState, workloads: tuple[WorkloadSpec, ...] = WORKLOADS) -> EngineState:
    text = pack_state(state, workloads, NOW, 1 << 30)[0].text
    loaded = unpack_state(text, workloads, NOW)
    assert loaded.notes == ()
    assert loaded.written_at == NOW
    return loaded.state


# ----------------------------------------------------------------------------------------------
# Round trip


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
units = st.integers(min_value=0, max_value=1000)


def times(window: float) -> st.SearchStrategy[float]:
    """Times inside a window ending at NOW, where the codec keeps everything."""
    return st.floats(min_value=NOW - window + 1e-3, max_value=NOW, allow_nan=False)


def pairs(window: float, values: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(st.tuples(times(window), values), max_size=5).map(lambda xs: tuple(sorted(xs)))


sla_memories = st.builds(queue_sla._Memory, times(600), finite, finite, finite, pairs(600, st.floats(0, 1e4)))
keda_memories = st.builds(
    KedaHpaMemory,
    times(600),
    times(600),
    st.tuples(st.none() | finite),  # KEDA_WL's ScaledObject has one trigger
    st.none() | times(600),
    units,
    pairs(300, units),
    pairs(15, st.integers(-100, 100)),
    st.text(max_size=40),
)
kpa_memories = st.builds(
    KnativeKpaMemory,
    pairs(60, finite),
    times(60),
    st.none() | times(60),
    units,
    st.none() | units,
    st.none() | times(60),
    st.text(max_size=40),
)


@st.composite
def workload_states(draw: st.DrawFn, wl: WorkloadSpec, memories: st.SearchStrategy[object]) -> WorkloadState:
    triggers = [t.name for t in wl.triggers]
    return WorkloadState(
        recommendations=draw(pairs(60, units)),
        scale_events=draw(pairs(15, st.integers(-50, 50))),
        last_active=draw(st.none() | times(1e6)),
        failures=draw(st.dictionaries(st.sampled_from(triggers), st.integers(1, 100))),
        policy_memory=draw(memories),
        blocked_until=draw(
            st.dictionaries(st.sampled_from([p.key for p in wl.pools]), st.floats(NOW + 1, NOW + 1e4))
        ),
        last_desired=draw(st.none() | units),
        failure_seen=draw(st.dictionaries(st.sampled_from(triggers), times(1e6))),
    )


@st.composite
def engine_states(draw: st.DrawFn) -> EngineState:
    candidates = {
        SLA_WL.name: workload_states(SLA_WL, st.none() | sla_memories),
        TARGET_WL.name: workload_states(TARGET_WL, st.none()),
        KEDA_WL.name: workload_states(KEDA_WL, st.none() | keda_memories),
        KPA_WL.name: workload_states(KPA_WL, st.none() | kpa_memories),
    }
    names = draw(st.sets(st.sampled_from(sorted(candidates))))
    return EngineState({name: draw(candidates[name]) for name in sorted(names)})


@settings(max_examples=300, deadline=None)
@given(engine_states())
def test_a_state_comes_back_equal_from_its_text(state: EngineState) -> None:
    assert round_trip(state) == state


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: encode_text({"x": b.hex()})))
def test_any_text_gives_a_state_and_never_raises(text: str) -> None:
    loaded = unpack_state(text, WORKLOADS, NOW)
    assert loaded.state == EngineState() and loaded.notes and loaded.written_at is None


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | finite | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=20,
    )
)
def test_any_json_in_a_workload_entry_starts_that_workload_fresh(junk: object) -> None:
    good = WorkloadState(recommendations=((NOW, 3),), last_desired=3)
    data = dump_state(EngineState({"batch": good}), WORKLOADS, NOW)[0]
    data["workloads"]["chat"] = junk
    data["workloads"]["keda"] = {"policy": {"name": "keda-hpa", "memory": junk}}
    state = load_state(json.loads(json.dumps(data)), WORKLOADS, NOW).state
    assert state.workloads["batch"] == good  # the others are not affected


# ----------------------------------------------------------------------------------------------
# A replica that adopts the state decides as the leader would


def test_a_replica_adopting_the_state_at_any_moment_decides_as_the_leader() -> None:
    """Ten minutes of a burst and its tail through every bundled policy kind. At every reconcile a
    second replica takes the leader's state from its text and decides on the same inputs: the same
    plan and the same decisions, and (pruning aside) the same state after."""
    workloads = WORKLOADS
    replicas = {p.key: 0 for wl in workloads for p in wl.pools}
    state = EngineState()
    blocked = failing = False
    for step in range(240):
        now = NOW + 2.5 * step
        burst = 300.0 if 20 <= step < 60 else (0.0 if step > 80 else 20.0)
        readings = {
            "chat": {"backlog": Reading(burst, now), "rate": Reading(burst / 10, now)},
            # The latency trigger fails for a while: failure counts and fallback are in the state.
            "batch": {"q": Reading(burst, now), "lat": Reading(None if 30 <= step < 50 else 1.0, now, "x")},
            "keda": {"q": Reading(burst, now)},
            "kpa": {"q": Reading(burst / 5, now)},
        }
        # Pods of the Salad pool sit Pending long enough to be given up and the pool blocked.
        snapshot = ClusterSnapshot(
            {
                key: PoolStatus(
                    n, ready=n if "salad" not in key else 0, pending_since=(NOW,) * n * ("salad" in key)
                )
                for key, n in replicas.items()
            }
        )
        plan, next_state = reconcile(workloads, snapshot, readings, state, Limits(), now)
        adopted = round_trip(state)
        plan2, next_state2 = reconcile(workloads, snapshot, readings, adopted, Limits(), now)
        assert plan2 == plan, step
        assert round_trip(next_state2) == round_trip(next_state), step
        state = next_state
        blocked = blocked or bool(state.workloads["chat"].blocked_until)
        failing = failing or bool(state.workloads["batch"].failures)
        for action in plan.actions:
            replicas[action.pool] = action.to_replicas
    # The scenario went through the states worth carrying: a blocked pool, failure counts.
    assert blocked and failing


# ----------------------------------------------------------------------------------------------
# What is left out, and why


def test_history_older_than_the_workloads_windows_is_dropped() -> None:
    ws = WorkloadState(
        # TARGET_WL: 300 s scale-down window, 60 s longest rate period.
        recommendations=((NOW - 400, 9), (NOW - 200, 7), (NOW, 5)),
        scale_events=((NOW - 90, 2), (NOW - 30, -1)),
        blocked_until={TARGET_WL.pools[0].key: NOW - 1},
    )
    loaded = round_trip(EngineState({"batch": ws}))
    assert loaded.workloads["batch"] == WorkloadState(
        recommendations=((NOW - 200, 7), (NOW, 5)), scale_events=((NOW - 30, -1),)
    )


def test_workloads_pools_and_triggers_not_configured_here_are_dropped() -> None:
    ws = WorkloadState(
        failures={"q": 2, "gone": 5},
        failure_seen={"q": NOW, "gone": NOW},
        blocked_until={"ns/batch-a100": NOW + 60, "ns/renamed": NOW + 60},
    )
    text = pack_state(EngineState({"batch": ws, "removed": ws}), (TARGET_WL, SLA_WL), NOW, 1 << 20)[0].text
    # "removed" is not even written: the leader only writes what it manages.
    assert "removed" not in json.dumps(decode_text(text))
    data = dump_state(EngineState({"batch": ws}), (TARGET_WL,), NOW)[0]
    data["workloads"]["removed"] = data["workloads"]["batch"]
    loaded = load_state(data, (TARGET_WL,), NOW)
    assert loaded.notes == ()
    assert loaded.state.workloads == {
        "batch": WorkloadState(
            failures={"q": 2}, failure_seen={"q": NOW}, blocked_until={"ns/batch-a100": NOW + 60}
        )
    }


def test_a_state_read_long_after_it_was_written_keeps_only_what_still_applies() -> None:
    """A replica that starts long after the last leader died finds an old state in the Lease: its
    windows and blocks are over, so the workload starts as fresh as without it."""
    ws = WorkloadState(
        recommendations=((NOW - 10, 9), (NOW, 5)),
        scale_events=((NOW, 2),),
        blocked_until={TARGET_WL.pools[0].key: NOW + 120},
        last_desired=5,
    )
    text = pack_state(EngineState({"batch": ws}), (TARGET_WL,), NOW, 1 << 20)[0].text
    later = unpack_state(text, (TARGET_WL,), NOW + 3600)
    assert later.written_at == NOW
    assert later.state.workloads["batch"] == WorkloadState(last_desired=5)


class Forgetful:
    """A third-party policy with memory but no codec."""

    name = "forgetful"

    def recommend(self, ctx: PolicyContext) -> Recommendation:
        return Recommendation(1.0, "forgetful", ("remembered", ctx.now))


def test_a_policy_without_a_codec_starts_fresh_and_says_so() -> None:
    wl = workload("plugin", policy=Forgetful())
    ws = WorkloadState(policy_memory=("remembered", NOW), last_desired=4)
    packed, notes = pack_state(EngineState({"plugin": ws}), (wl,), NOW, 1 << 20)
    assert notes == ("workload plugin: policy forgetful has no dump_memory; its memory is not carried over",)
    assert unpack_state(packed.text, (wl,), NOW).state.workloads["plugin"] == WorkloadState(last_desired=4)


def test_memory_of_another_policy_is_not_loaded() -> None:
    ws = WorkloadState(policy_memory=queue_sla._Memory(NOW, 1.0, 1.0, 0.0, ((NOW, 3.0),)))
    data = dump_state(EngineState({"chat": ws}), (SLA_WL,), NOW)[0]
    reloaded = workload("chat", policy=KedaHpaPolicy(KedaHpaOptions()))
    loaded = load_state(data, (reloaded,), NOW)
    assert loaded.state.workloads["chat"].policy_memory is None
    assert loaded.notes == (
        "workload chat: the memory is of policy 'queue-sla', not keda-hpa; it starts fresh",
    )


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("unknown version", {"version": FORMAT_VERSION + 1, "workloads": {}}),
        ("no version", {"workloads": {}}),
        ("not an object", [1, 2]),
        ("no workloads", {"version": FORMAT_VERSION}),
        ("no time", {"version": FORMAT_VERSION, "workloads": {}}),
    ],
)
def test_a_foreign_format_starts_fresh_with_a_note(case: str, data: object) -> None:
    loaded = load_state(data, WORKLOADS, NOW)
    assert loaded.state == EngineState() and len(loaded.notes) == 1, case
    assert "starting fresh" in loaded.notes[0]


# ----------------------------------------------------------------------------------------------
# Size


def busy_state(n: int) -> tuple[EngineState, tuple[WorkloadSpec, ...]]:
    """`n` queue-sla workloads, each with a full stabilization history, a blocked pool, failing
    triggers and a hold window in which the need fell step by step (the longest memory it keeps)."""
    workloads = []
    states = {}
    for i in range(n):
        wl = workload(
            f"workload-{i:04d}",
            (pool(f"w{i}-a100"), pool(f"w{i}-salad", virtual=True)),
            triggers=(trigger("backlog"), trigger("rate")),
            policy=SLA,
            behavior=HPA_LIKE,
        )
        workloads.append(wl)
        needs = tuple((NOW - 600 + 5 * k, 100.0 - k * 0.77) for k in range(120))
        states[wl.name] = WorkloadState(
            recommendations=tuple((NOW - 290 + 10 * k, 40 - k) for k in range(30)),
            scale_events=((NOW - 50, 4), (NOW - 20, -2)),
            last_active=NOW - 10,
            failures={"rate": 2},
            failure_seen={"rate": NOW - 1.5},
            policy_memory=queue_sla._Memory(NOW, 12.3456789, 11.987654, 0.0123, needs),
            blocked_until={wl.pools[1].key: NOW + 90},
            last_desired=40,
        )
    return EngineState(states), tuple(workloads)


def test_a_state_too_large_for_the_space_is_written_with_less_detail() -> None:
    state, workloads = busy_state(50)
    full = pack_state(state, workloads, NOW, 1 << 30)[0]
    assert full.detail is Detail.FULL
    smaller = pack_state(state, workloads, NOW, full.full_size - 1)[0]
    assert smaller.detail is Detail.NO_HISTORY and len(smaller.text) < full.full_size
    first = unpack_state(smaller.text, workloads, NOW).state.workloads[workloads[0].name]
    assert (
        first.recommendations == ()
        and first.policy_memory == state.workloads[workloads[0].name].policy_memory
    )
    tiny = pack_state(state, workloads, NOW, 10)[0]
    assert tiny.detail is Detail.EMPTY
    assert unpack_state(tiny.text, workloads, NOW).state == EngineState()


@pytest.mark.skipif(
    compiled(),
    reason="replaces a function of queue_sla, which the compiled module (setup.py) calls directly",
)
def test_queue_sla_keeps_only_the_needs_that_can_still_be_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping a bucket that a later, higher one outlasts changes no recommendation: the same
    readings through the policy with and without the pruning give the same units."""
    samples = [
        (NOW + t, 400.0 * math.sin(t / 97.0) ** 2 + (300 if t % 613 < 40 else 0)) for t in range(0, 1800, 3)
    ]

    def run() -> tuple[list[float | None], object]:
        memory: object = None
        out = []
        for now, backlog in samples:
            ctx = PolicyContext(
                SLA_WL, {"backlog": backlog}, frozenset({"rate"}), 5.0, 5.0, 60.0, now, memory
            )
            rec = SLA.recommend(ctx)
            out.append(rec.units)
            memory = rec.memory
        return out, memory

    pruned, memory = run()
    monkeypatch.setattr(queue_sla, "_outlasting", lambda needs: needs)
    unpruned, full_memory = run()
    assert pruned == unpruned
    assert isinstance(memory, queue_sla._Memory) and isinstance(full_memory, queue_sla._Memory)
    assert len(memory.needs) < len(full_memory.needs) / 4
