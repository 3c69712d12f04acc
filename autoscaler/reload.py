"""Policy hot reload: notice that the policy files changed, validate them, and hand the new
configuration over, or keep the last good one.

Role: the only code that re-reads policy files while the autoscaler runs. Caller: `autoscaler.live`
(`PolicyReloader.run` as a task, with an `apply` callback that swaps the controller's configuration
and the cluster view's pools); tests call `check()` directly.

Why contents and not modification times: a ConfigMap mounted as a volume is updated by the kubelet
swapping a symlink (`..data` -> a fresh timestamped directory) in one rename; the files we read are
symlinks through `..data`, and the mtimes seen through them may not move, or move for files whose
content did not change. So every `interval` seconds the poll hashes the names and bytes of the
policy files (found as `load_config` finds them, read through the symlinks), and only a different
hash leads to `load_config`. The files are a few kilobytes; hashing them every few seconds costs
nothing worth an inotify dependency.

A configuration with errors is never applied, not even its valid workloads: a half-applied file
would silently stop managing the workloads whose documents broke. A file that held documents and
is suddenly empty (truncated while being written) counts as such an error; deleting it does not.
Each error is logged once, as `file:line: field: message`, and the last good configuration keeps
running until the files change again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoscaler.config import ConfigError, LoadedConfig, load_config
from autoscaler.config.loader import expand_paths, read_file
from autoscaler.settings import Settings

log = logging.getLogger("autoscaler.reload")

ApplyConfig = Callable[[LoadedConfig], Awaitable[None]]


def log_warnings(config: LoadedConfig) -> None:
    """Settings of the running configuration that have no effect, once per (re)load."""
    for warning in config.warnings:
        log.warning("policy files: %s", warning, extra={"fields": {"warning": str(warning)}})


def fingerprint(paths: Sequence[str | Path]) -> str:
    """A hash of which policy files there are (as `load_config` finds them) and what they hold.
    Path problems and unreadable files hash as such, so their repair counts as a change."""
    digest = hashlib.sha256()
    files, problems = expand_paths(paths)
    for problem in problems:
        digest.update(f"problem\0{problem}\0".encode())
    for file in files:
        digest.update(f"file\0{file}\0".encode())
        raw = read_file(file)  # bounded: a huge file is hashed by its error, not read
        digest.update(raw if isinstance(raw, bytes) else f"problem\0{raw}".encode())
    return digest.hexdigest()


def emptied_files(running: LoadedConfig, new: LoadedConfig) -> list[ConfigError]:
    """Files that held documents in the running configuration and hold none now. An editor saving,
    or the kubelet writing, can leave a file empty for a moment; applying that would drop its
    workloads and, once the file is back, start them over with no state. Removing workloads takes
    deleting the file, which is unambiguous."""
    problems: list[ConfigError] = []
    for file in new.files:
        was = running.documents.get(file, 0)
        if was and not new.documents.get(file, 0):
            held = f"{was} document" if was == 1 else f"{was} documents"
            problems.append(
                ConfigError(
                    file,
                    0,
                    "path",
                    f"was {held}, now empty: keeping the last good configuration; "
                    "delete the file to remove its workloads",
                )
            )
    return problems


@dataclass(frozen=True)
class ReloadResult:
    """What one `check()` did: nothing (unchanged), applied a new configuration, or rejected one."""

    changed: bool
    applied: bool = False
    errors: tuple[ConfigError, ...] = ()


class PolicyReloader:
    """Polls the policy paths and applies what changed. `current` is the configuration running
    now (the last good one); `last_errors` the problems of the last rejected version, if the files
    still hold it."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        settings: Settings,
        apply: ApplyConfig,
        *,
        current: LoadedConfig,
        seen: str | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = tuple(paths)
        self.settings = settings
        self.apply = apply
        self.current = current
        self.interval = settings.policy_reload_seconds if interval is None else interval
        self.last_errors: tuple[ConfigError, ...] = ()
        self.applied = 0
        self.rejected = 0
        self._clock = clock
        # `seen`: the fingerprint taken just before `current` was loaded, so an edit landing between
        # that load and this constructor is not mistaken for the running version.
        self._seen = fingerprint(self.paths) if seen is None else seen
        # The reloader is built once, with the configuration the autoscaler starts with.
        log_warnings(current)

    async def check(self) -> ReloadResult:
        """One poll. Applies a changed, valid configuration; logs and keeps the last good one
        otherwise. The apply callback's own failure is logged and retried at the next poll."""
        seen = fingerprint(self.paths)
        if seen == self._seen:
            return ReloadResult(changed=False)
        config = load_config(self.paths, self.settings.allowed_policy_modules, self.settings.cluster_name)
        errors = (*emptied_files(self.current, config), *config.errors)
        if errors:
            self._seen = seen
            self.last_errors = errors
            self.rejected += 1
            for error in errors:
                log.error("policy reload rejected: %s", error, extra={"fields": {"error": str(error)}})
            log.error(
                "%d problem(s) in the policy files: keeping the last good configuration",
                len(errors),
                extra={"fields": {"workloads": [w.name for w in self.current.workloads]}},
            )
            return ReloadResult(changed=True, errors=errors)
        try:
            await self.apply(config)
        except Exception as exc:  # leave `_seen` alone: the next poll tries again
            log.exception("applying the reloaded policy files failed", extra={"fields": {"error": str(exc)}})
            return ReloadResult(changed=True)
        self._seen = seen
        self.current = config
        self.last_errors = ()
        self.applied += 1
        log_warnings(config)
        if not config.workloads:
            log.warning("the policy files now hold no ScalingPolicy: no workload is managed")
        log.info(
            "policy files reloaded",
            extra={"fields": {"workloads": [w.name for w in config.workloads], "files": list(config.files)}},
        )
        return ReloadResult(changed=True, applied=True)

    async def run(self) -> None:
        """`check()` every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a bug in one poll must not end hot reload for good
                log.exception("policy reload check failed")
