"""Where policy names in policy files come from.

An explicit, alphabetical table of built-ins (the KEDA way: no magic discovery), plus third-party
classes from the `gpu-autoscaler.policies` entry-point group, plus `python: module:Class` for modules
the operator allows in the settings. A ConfigMap edit alone must never import code of its choosing,
so `python:` refuses any module outside `allowed_modules`. The simulator's baselines
(`policies.baselines`: keda-hpa, knative-kpa, static) are built-ins too, so a policy file may name
them. Callers: `config.compile`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from autoscaler.engine.policy import Policy
from autoscaler.policies.baselines import KedaHpaPolicy, KnativeKpaPolicy, StaticPolicy
from autoscaler.policies.queue_sla import QueueSlaPolicy
from autoscaler.policies.target import TargetPolicy

ENTRY_POINT_GROUP = "gpu-autoscaler.policies"

PolicyClass = Callable[[Any], Policy]

BUILTINS: Mapping[str, type[Any]] = {
    "keda-hpa": KedaHpaPolicy,
    "knative-kpa": KnativeKpaPolicy,
    "queue-sla": QueueSlaPolicy,
    "static": StaticPolicy,
    "target": TargetPolicy,
}


class PolicyLoadError(ValueError):
    """A policy block names something we will not or cannot load; the message says which and why.
    `field` is the option at fault (dotted, relative to the `policy:` block) when there is one."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def _entry_point_classes() -> dict[str, type[Any]]:
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_types() -> list[str]:
    return sorted({*BUILTINS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def _python_class(spec: str, allowed_modules: Iterable[str]) -> type[Any]:
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise PolicyLoadError(f"'{spec}' is not of the form 'package.module:Class'", "python")
    allowed = list(allowed_modules)
    if not any(module_name == m or module_name.startswith(m + ".") for m in allowed):
        hint = ", ".join(allowed) if allowed else "none"
        raise PolicyLoadError(
            f"module '{module_name}' is not allowed (allowed: {hint}); add it to "
            "AUTOSCALER_ALLOWED_POLICY_MODULES or install it under the "
            f"'{ENTRY_POINT_GROUP}' entry point group",
            "python",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyLoadError(f"cannot import '{module_name}': {exc}", "python") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise PolicyLoadError(f"'{module_name}' has no class '{class_name}'", "python")
    return cls


def resolve_class(
    type_name: str | None, python: str | None, allowed_modules: Iterable[str] = ()
) -> type[Any]:
    if python is not None:
        return _python_class(python, allowed_modules)
    if type_name is None:
        raise PolicyLoadError("give either 'type' (one of: " + ", ".join(known_types()) + ") or 'python'")
    if type_name in BUILTINS:
        return BUILTINS[type_name]
    third_party = _entry_point_classes()
    if type_name in third_party:
        return third_party[type_name]
    raise PolicyLoadError(f"unknown policy type '{type_name}' (known: {', '.join(known_types())})", "type")


def build_policy(
    type_name: str | None,
    python: str | None,
    options: Mapping[str, Any],
    allowed_modules: Iterable[str] = (),
) -> Policy:
    """Validate `options` with the policy's own pydantic model and construct it.
    Raises PolicyLoadError (with the failing option in `.field`) on any problem."""
    cls = resolve_class(type_name, python, allowed_modules)
    options_model = getattr(cls, "Options", None)
    if options_model is None or not hasattr(cls, "recommend"):
        raise PolicyLoadError(f"{cls.__module__}.{cls.__qualname__} does not implement the Policy protocol")
    try:
        parsed = options_model.model_validate(dict(options))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise PolicyLoadError(first["msg"], field) from exc
    policy: Policy = cls(parsed)
    return policy
