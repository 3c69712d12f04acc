"""`observers`: telemetry and the KEDA scaler observe the same reconciles; one failing does not keep
the other from being told, and the failure still reaches the controller, which logs and counts it."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.controller import Observers, observers
from autoscaler.engine.types import ClusterSnapshot, Limits, Plan, Reconciled


class Recording:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def observe(self, reconciled: Reconciled) -> None:
        self.calls.append(("observe", reconciled.now))
        if self.fail:
            raise RuntimeError("broken observer")

    def set_leader(self, leader: bool) -> None:
        self.calls.append(("leader", leader))

    def set_ready(self, ready: bool) -> None:
        self.calls.append(("ready", ready))


def test_every_observer_is_told_even_after_one_fails() -> None:
    broken, fine = Recording(fail=True), Recording()
    both = observers(broken, None, fine)
    assert isinstance(both, Observers)
    with pytest.raises(RuntimeError, match="broken observer"):
        both.observe(Reconciled(1.0, (), Limits(), ClusterSnapshot({}), {}, Plan((), {}), 0.0))
    both.set_leader(True)
    both.set_ready(True)
    assert fine.calls == [("observe", 1.0), ("leader", True), ("ready", True)]
    assert broken.calls == fine.calls


def test_one_observer_is_itself_and_none_is_none() -> None:
    only = Recording()
    assert observers(None, only) is only
    assert observers(None, None) is None
