"""`EngineState` to and from text, so that a new leader resumes where the old one stopped.

The engine's memory (stabilization windows, cooldown clocks, failure counts, pools blocked after a
pending timeout, the policies' own memory such as queue-sla's hold window) lives in `EngineState`.
The live controller writes it, encoded here, into an annotation of the leader-election Lease at
each renewal; every other replica adopts it, so a failover in the middle of a hold window does not
shrink the fleet. Callers: `autoscaler.controller` (`Controller.export_state`, `adopt_state`).

Pure, like the rest of the engine: no clock (`now` is an argument), no I/O, no logging; problems come
back as notes for the caller to log. Times are the engine's clock, which the live controller runs
on wall-clock seconds, so they mean the same in every replica.

Format: a JSON object `{"version": 1, "at": now, "workloads": {name: {...}}}`, compressed with zlib
and written as base64 (the Lease annotation is text, and the repeated keys of a thousand workloads
compress tenfold). A policy's memory is carried only when the policy has the optional methods
`dump_memory` / `load_memory` (see `engine.policy`), under the policy's `name`; a policy without
them, or whose name differs on the reading side (a reload changed it), starts fresh there. Anything
unreadable (corrupt text, an unknown version, a wrong type in a workload's entry) is never fatal:
the affected part starts fresh and a note says so.

Size is bounded: history older than the longest window a workload uses is dropped (it can no longer
change a decision), and `pack_state` falls back to coarser levels of detail when the text would not
fit the space given (see `Detail`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from autoscaler.engine.types import EngineState, WorkloadSpec, WorkloadState

FORMAT_VERSION = 1

_T = TypeVar("_T")

__all__ = [
    "FORMAT_VERSION",
    "Detail",
    "Loaded",
    "Packed",
    "StateFormatError",
    "as_float",
    "as_int",
    "as_object",
    "as_optional_float",
    "as_pairs",
    "as_str",
    "decode_text",
    "dump_state",
    "encode_text",
    "load_state",
    "pack_state",
    "unpack_state",
]


class StateFormatError(ValueError):
    """The text or one of its parts is not what this format writes."""


class Detail(IntEnum):
    """How much of the state `pack_state` keeps, from all of it to none; each level drops what a new
    leader can best do without. Without the behavior histories the engine counts the replicas it
    finds as a recommendation made now (the HPA's initial recommendation), which holds them for the
    scale-down window; without a policy's memory the policy starts fresh (queue-sla then holds what
    runs for its hold window). Both err on the side of keeping capacity."""

    FULL = 0
    NO_HISTORY = 1  # without the stabilization recommendations and the rate policies' scale events
    NO_POLICY_MEMORY = 2  # ... and without the policies' memory
    EMPTY = 3  # nothing: every workload starts fresh


@dataclass(frozen=True, slots=True)
class Packed:
    text: str
    detail: Detail
    # Size of the full state's text, for the caller's log line when it had to leave something out.
    full_size: int


# ----------------------------------------------------------------------------------------------
# EngineState <-> JSON-able dict


def dump_state(
    state: EngineState, workloads: Sequence[WorkloadSpec], now: float, detail: Detail = Detail.FULL
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The state of the configured `workloads` as a JSON-able dict, and notes on what was left out
    (a policy without `dump_memory`, a memory its policy could not dump)."""
    notes: list[str] = []
    out: dict[str, Any] = {}
    if detail < Detail.EMPTY:
        for wl in workloads:
            ws = state.workloads.get(wl.name)
            if ws is not None:
                out[wl.name] = _dump_workload(wl, ws, now, detail, notes)
    return {"version": FORMAT_VERSION, "at": now, "workloads": out}, tuple(notes)


@dataclass(frozen=True, slots=True)
class Loaded:
    state: EngineState
    # What could not be carried over, one line each, for the caller's log.
    notes: tuple[str, ...]
    # The `now` of the replica that wrote it; None when nothing readable was loaded.
    written_at: float | None = None


def load_state(data: object, workloads: Sequence[WorkloadSpec], now: float) -> Loaded:
    """The state `dump_state` wrote, for the configured `workloads` only (others are dropped), as
    of `now`: history that has left its window since it was written is dropped here too, so a state
    written long ago is the fresh start it should be (the stages then count what runs as their
    first sight) rather than a memory of nothing recent. Never raises: what cannot be read starts
    fresh, with a note."""
    if not isinstance(data, dict):
        return Loaded(EngineState(), ("engine state: not a JSON object; starting fresh",))
    version = data.get("version")
    if version != FORMAT_VERSION:
        note = f"engine state: format version {version!r} is not {FORMAT_VERSION}; starting fresh"
        return Loaded(EngineState(), (note,))
    entries = data.get("workloads")
    if not isinstance(entries, dict):
        return Loaded(EngineState(), ("engine state: no 'workloads' object; starting fresh",))
    try:
        written_at = as_float(data.get("at"))
    except StateFormatError:
        return Loaded(EngineState(), ("engine state: no time it was written at; starting fresh",))
    notes: list[str] = []
    states: dict[str, WorkloadState] = {}
    for wl in workloads:
        entry = entries.get(wl.name)
        if entry is None:
            continue
        try:
            states[wl.name] = _load_workload(wl, entry, now, notes)
        except (StateFormatError, TypeError, ValueError, KeyError) as exc:
            notes.append(f"workload {wl.name}: unreadable engine state ({exc}); it starts fresh")
    return Loaded(EngineState(states), tuple(notes), written_at)


# ----------------------------------------------------------------------------------------------
# dict <-> text


def encode_text(data: Mapping[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def decode_text(text: str) -> object:
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
        return json.loads(raw)
    except (binascii.Error, zlib.error, UnicodeError, ValueError) as exc:
        raise StateFormatError(f"not an encoded engine state: {exc}") from exc


def pack_state(
    state: EngineState, workloads: Sequence[WorkloadSpec], now: float, max_chars: int
) -> tuple[Packed, tuple[str, ...]]:
    """The most detailed text of the state that fits in `max_chars`, and the notes of its dump.
    `Detail.EMPTY` always fits any sane limit (a few dozen characters). The state is dumped once;
    each coarser level is that dump with parts removed."""
    data, notes = dump_state(state, workloads, now)
    full = encode_text(data)
    if len(full) <= max_chars:
        return Packed(full, Detail.FULL, len(full)), notes
    entries: dict[str, dict[str, Any]] = data["workloads"]
    for detail in (Detail.NO_HISTORY, Detail.NO_POLICY_MEMORY):
        for entry in entries.values():
            for key in _LEFT_OUT_AT[detail]:
                entry.pop(key, None)
        text = encode_text(data)
        if len(text) <= max_chars:
            return Packed(text, detail, len(full)), notes
    return Packed(encode_text({**data, "workloads": {}}), Detail.EMPTY, len(full)), notes


_LEFT_OUT_AT = {Detail.NO_HISTORY: ("recommendations", "scaleEvents"), Detail.NO_POLICY_MEMORY: ("policy",)}


def unpack_state(text: str, workloads: Sequence[WorkloadSpec], now: float) -> Loaded:
    """`load_state(decode_text(text), ...)`, with an undecodable text as one more note."""
    try:
        data = decode_text(text)
    except StateFormatError as exc:
        return Loaded(EngineState(), (f"engine state: {exc}; starting fresh",))
    return load_state(data, workloads, now)


# ----------------------------------------------------------------------------------------------
# One workload


def _windows(wl: WorkloadSpec) -> tuple[float, float]:
    """The longest stabilization window and the longest rate-policy period of `wl`: history older
    than these can never be a window's min or max again, nor count against a rate (see behavior)."""
    behavior = wl.behavior
    stabilization = max(behavior.scale_up.stabilization_seconds, behavior.scale_down.stabilization_seconds)
    period = 0.0
    for policy in (*behavior.scale_up.policies, *behavior.scale_down.policies):
        period = max(period, policy.period_seconds)
    return stabilization, period


def _dump_workload(
    wl: WorkloadSpec, ws: WorkloadState, now: float, detail: Detail, notes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lastActive": ws.last_active,
        "lastDesired": ws.last_desired,
        "failures": dict(ws.failures),
        "failureSeen": dict(ws.failure_seen),
        # placement drops a block once its time has passed; so can we.
        "blockedUntil": {k: t for k, t in ws.blocked_until.items() if t > now},
    }
    if detail < Detail.NO_HISTORY:
        stabilization, period = _windows(wl)
        out["recommendations"] = [[t, u] for t, u in ws.recommendations if t > now - stabilization]
        out["scaleEvents"] = [[t, d] for t, d in ws.scale_events if t > now - period]
    if detail < Detail.NO_POLICY_MEMORY and ws.policy_memory is not None:
        policy = wl.policy
        name = getattr(policy, "name", type(policy).__name__)
        dump = getattr(policy, "dump_memory", None)
        if dump is None:
            notes.append(
                f"workload {wl.name}: policy {name} has no dump_memory; its memory is not carried over"
            )
        else:
            try:
                out["policy"] = {"name": name, "memory": dump(ws.policy_memory)}
            except Exception as exc:  # a third-party policy's bug costs its memory, not the others'
                notes.append(f"workload {wl.name}: policy {name} could not dump its memory: {exc!r}")
    return out


def _load_workload(wl: WorkloadSpec, entry: object, now: float, notes: list[str]) -> WorkloadState:
    if not isinstance(entry, dict):
        raise StateFormatError("not an object")
    pools = {p.key for p in wl.pools}
    triggers = {t.name for t in wl.triggers}
    memory: object = None
    carried = entry.get("policy")
    if carried is not None:
        memory = _load_memory(wl, carried, notes)
    failures = as_object(entry.get("failures", {}))
    seen = as_object(entry.get("failureSeen", {}))
    blocked = as_object(entry.get("blockedUntil", {}))
    last_desired = entry.get("lastDesired")
    stabilization, period = _windows(wl)
    recommendations = as_pairs(entry.get("recommendations", []), as_int)
    events = as_pairs(entry.get("scaleEvents", []), as_int)
    return WorkloadState(
        recommendations=tuple(r for r in recommendations if r[0] > now - stabilization),
        scale_events=tuple(e for e in events if e[0] > now - period),
        last_active=as_optional_float(entry.get("lastActive")),
        # Names this configuration no longer has are dropped: they would only confuse the stages.
        failures={k: as_int(v) for k, v in failures.items() if k in triggers},
        policy_memory=memory,
        blocked_until={k: t for k, v in blocked.items() if k in pools and (t := as_float(v)) > now},
        last_desired=None if last_desired is None else as_int(last_desired),
        failure_seen={k: as_float(v) for k, v in seen.items() if k in triggers},
    )


def _load_memory(wl: WorkloadSpec, carried: object, notes: list[str]) -> object:
    policy = wl.policy
    name = getattr(policy, "name", type(policy).__name__)
    if not isinstance(carried, dict) or "memory" not in carried:
        raise StateFormatError("'policy' is not an object with a 'memory'")
    if carried.get("name") != name:
        other = carried.get("name")
        notes.append(f"workload {wl.name}: the memory is of policy {other!r}, not {name}; it starts fresh")
        return None
    load = getattr(policy, "load_memory", None)
    if load is None:
        notes.append(f"workload {wl.name}: policy {name} has no load_memory; its memory starts fresh")
        return None
    try:
        return load(carried["memory"])
    except Exception as exc:  # corrupt memory, or a third-party policy's bug: fresh, not a crash
        notes.append(
            f"workload {wl.name}: policy {name} could not load its memory ({exc!r}); it starts fresh"
        )
        return None


# Strict readers, for `load_state` and for policies' `load_memory`: JSON gives int, float, str,
# bool, None, list and dict; a value of another type than the one written means the text is corrupt.


def as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateFormatError(f"{value!r} is not a finite number")
    return value


def as_optional_float(value: object) -> float | None:
    return None if value is None else as_float(value)


def as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateFormatError(f"{value!r} is not an integer")
    return value


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise StateFormatError(f"{value!r} is not a string")
    return value


def as_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateFormatError(f"{value!r} is not an object")
    return value


def as_pairs(value: object, second: Callable[[object], _T]) -> tuple[tuple[float, _T], ...]:
    """A list of [time, value] pairs, as a tuple of tuples."""
    if not isinstance(value, list):
        raise StateFormatError(f"{value!r} is not a list")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise StateFormatError(f"{item!r} is not a [time, value] pair")
        out.append((as_float(item[0]), second(item[1])))
    return tuple(out)
