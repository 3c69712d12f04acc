"""The engine's values pickle and copy, compiled as the image builds them or from the sources.

`pickle` and `copy` restore an object field by field by default, which a frozen dataclass compiled
with mypyc refuses; `engine.types.Frozen` rebuilds it through its constructor instead. CI runs this
file against the compiled modules too (.ci/run), where a class left without that base fails."""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import pickle
from pathlib import Path

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import ClusterSnapshot, EngineState, Frozen, PoolStatus, Reading
from autoscaler.policies.queue_sla import QueueSlaPolicy
from autoscaler.sim.scenario import default_scenario_path, load_scenario

ROOT = Path(__file__).resolve().parents[2]


def _compiled_modules() -> list[str]:
    """The modules setup.py compiles, as import names (read from its COMPILED list, since importing
    setup.py would run setuptools)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


def _dataclasses() -> list[type]:
    """Every dataclass defined in a module that setup.py compiles."""
    found = []
    for name in _compiled_modules():
        module = importlib.import_module(name)
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == name and dataclasses.is_dataclass(value)
        ]
    return found


def test_every_frozen_dataclass_of_a_compiled_module_derives_from_frozen() -> None:
    assert "autoscaler.engine.types" in _compiled_modules()
    frozen = [c for c in _dataclasses() if c.__dataclass_params__.frozen]  # type: ignore[attr-defined]
    assert len(frozen) > 20  # the engine's types are among them
    for cls in frozen:
        assert issubclass(cls, Frozen), f"{cls.__module__}.{cls.__name__} does not derive from Frozen"


def test_a_scenario_and_the_engine_state_it_leads_to_survive_pickle_and_deepcopy() -> None:
    sim = load_scenario(default_scenario_path())
    assert any(isinstance(w.policy, QueueSlaPolicy) for w in sim.workloads)
    readings = {w.name: {t.name: Reading(40.0, 0.0) for t in w.triggers} for w in sim.workloads}
    state = EngineState()
    sizes: dict[str, int] = {}
    for step in range(3):
        snapshot = ClusterSnapshot(pools={k: PoolStatus(v, ready=v) for k, v in sizes.items()})
        plan, state = reconcile(sim.workloads, snapshot, readings, state, sim.limits, step * 15.0)
        sizes.update((a.pool, a.to_replicas) for a in plan.actions)
    assert plan.decisions and any(s.policy_memory is not None for s in state.workloads.values())

    for original in (sim.workloads, sim.limits, state, plan, snapshot):
        for restored in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original)):
            assert restored == original
            assert restored is not original
    # The whole Simulation, as a worker process receives it (its traces are numpy arrays, which
    # have no plain equality: compare what the engine reads).
    restored_sim = pickle.loads(pickle.dumps(sim))
    assert restored_sim.workloads == sim.workloads and restored_sim.limits == sim.limits
    for before, after in zip(sim.workloads, restored_sim.workloads, strict=True):
        # The policy is left out of WorkloadSpec's equality: compare it apart.
        assert type(after.policy) is type(before.policy)
        assert getattr(after.policy, "options", None) == getattr(before.policy, "options", None)
        # Derived fields are computed again by the constructor, not lost.
        assert [p.key for p in after.pools] == [p.key for p in before.pools]
