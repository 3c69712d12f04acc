"""What a policy file may make a source read from the environment, and where credentials may go.

A policy file is a ConfigMap: whoever may edit it may change scaling, but must not be able to make
the autoscaler send a secret of the operator's anywhere. Two rules, both the operator's settings:
- `AUTOSCALER_ALLOWED_SECRET_ENV`: each variable a trigger may name, bound to the one option that
  may name it (`RABBITMQ_URL:connectionFromEnv`). So `tokenFromEnv: RABBITMQ_URL` is refused: the
  broker URL is not sent as a bearer token. A connection URL names its own server, so it travels
  nowhere else; a token or password goes to the Prometheus the trigger names, hence:
- credentials (`authModes`) go only to a Prometheus the operator named: `AUTOSCALER_PROMETHEUS_URL`
  or a host in `AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS`. When that list is set, it also bounds every
  `serverAddress` (a query without credentials leaks nothing, but it is a request from inside the
  cluster to wherever the file says, and its error text is logged).
Checked where a source reads the environment (it never reads a refused variable) and by
`autoscaler validate` (`config.load_config(..., secret_access=...)`). Callers: `sources.build_source`,
the sources, `config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from autoscaler.config.presets import PROMETHEUS_TRIGGER_TYPES
from autoscaler.settings import DEFAULT_ALLOWED_SECRET_ENV, Settings

ENV_SETTING = "AUTOSCALER_ALLOWED_SECRET_ENV"
HOSTS_SETTING = "AUTOSCALER_ALLOWED_PROMETHEUS_HOSTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _bindings(entries: Sequence[str]) -> frozenset[tuple[str, str]]:
    return frozenset((variable, option) for variable, _, option in (e.partition(":") for e in entries))


def _address(url: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return ((parts.hostname or "").lower(), port) if parts.hostname else None


def _display(address: tuple[str, int | None] | None) -> str:
    if address is None:
        return "<unparsable>"
    host, port = address
    return f"{host}:{port}" if port is not None else host


@dataclass(frozen=True)
class SecretAccess:
    env: frozenset[tuple[str, str]] = _bindings(DEFAULT_ALLOWED_SECRET_ENV)
    prometheus_url: str | None = None
    prometheus_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretAccess:
        return cls(
            _bindings(settings.allowed_secret_env),
            settings.prometheus_url,
            tuple(h.lower() for h in settings.allowed_prometheus_hosts),
        )

    def env_refusal(self, variable: str, option: str) -> str | None:
        """Why `option: variable` may not be read, or None when it may. Messages name no option
        first: the caller says where (a file's field path, a trigger's error)."""
        if (variable, option) in self.env:
            return None
        bound = sorted(o for v, o in self.env if v == variable)
        why = f"is allowed only for {', '.join(bound)}" if bound else "is not allowed"
        return (
            f"environment variable {variable} {why}; to let triggers read it as {option}, "
            f"add '{variable}:{option}' to {ENV_SETTING}"
        )

    def server_refusal(self, server: str, sends_credentials: bool) -> str | None:
        """Why a Prometheus trigger may not query `server` (with credentials), or None."""
        address = _address(server)
        if address is not None and (address == _address(self.prometheus_url or "") or self._listed(address)):
            return None
        if self.prometheus_hosts:
            return (
                f"host {_display(address)} is not in {HOSTS_SETTING} "
                f"({', '.join(self.prometheus_hosts)}); add it there, or query AUTOSCALER_PROMETHEUS_URL"
            )
        if sends_credentials:
            return (
                f"credentials (authModes) go only to a Prometheus the operator names; "
                f"add '{_display(address)}' to {HOSTS_SETTING}, or set AUTOSCALER_PROMETHEUS_URL to it "
                "and drop serverAddress"
            )
        return None

    def trigger_refusals(self, trigger_type: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(option, message) for each thing the trigger's options ask that the settings refuse."""
        refusals: list[tuple[str, str]] = []
        for key, value in options.items():
            if key.endswith("FromEnv") and isinstance(value, str):
                message = self.env_refusal(value, key)
                if message is not None:
                    refusals.append((key, message))
        server = options.get("serverAddress")
        if trigger_type in PROMETHEUS_TRIGGER_TYPES and isinstance(server, str):
            message = self.server_refusal(server, options.get("authModes") is not None)
            if message is not None:
                refusals.append(("serverAddress", message))
        return refusals

    def _listed(self, address: tuple[str, int | None]) -> bool:
        host, port = address
        return host in self.prometheus_hosts or f"{host}:{port}" in self.prometheus_hosts


# The settings' defaults: what a source built without settings (tests, benchmarks) is allowed.
DEFAULT_ACCESS = SecretAccess()
