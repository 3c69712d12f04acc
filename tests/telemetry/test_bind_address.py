"""Where `/metrics` listens: `AUTOSCALER_METRICS_BIND_ADDRESS` (an IP address; 0.0.0.0 by default,
since in a pod Prometheus and the kubelet's probes come from other addresses) is the address the
server binds, so a dry run on a laptop can keep it to loopback."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from autoscaler.settings import Settings
from autoscaler.telemetry import Telemetry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(host: str, port: int) -> int:
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:
        return int(response.status)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Telemetry]:
    settings = Settings(metrics_bind_address=request.param, metrics_port=free_port())
    telemetry = Telemetry.from_settings(settings)
    telemetry.serve()
    try:
        yield telemetry
    finally:
        telemetry.close()


def test_the_default_is_every_address_so_prometheus_reaches_the_pod() -> None:
    assert str(Settings().metrics_bind_address) == "0.0.0.0"


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_METRICS_BIND_ADDRESS", "127.0.0.1")
    assert str(Settings().metrics_bind_address) == "127.0.0.1"


@pytest.mark.parametrize("value", ["localhost", "0.0.0.0:9102", "300.1.1.1", ""])
def test_only_an_ip_address_is_accepted(value: str) -> None:
    with pytest.raises(ValidationError, match="metrics_bind_address"):
        Settings(metrics_bind_address=value)


@pytest.mark.parametrize("served", ["127.0.0.1"], indirect=True)
def test_bound_to_loopback_it_answers_there_and_nowhere_else(served: Telemetry) -> None:
    assert served.bound_address == ("127.0.0.1", served.port)
    assert healthz("127.0.0.1", served.port) == 200
    # 127.0.0.2 is another local address (all of 127/8 is loopback on Linux): nothing listens there.
    with pytest.raises(urllib.error.URLError):
        healthz("127.0.0.2", served.port)


@pytest.mark.parametrize("served", ["0.0.0.0"], indirect=True)
def test_bound_to_every_address_it_answers_on_another_local_address(served: Telemetry) -> None:
    assert served.bound_address == ("0.0.0.0", served.port)
    assert healthz("127.0.0.2", served.port) == 200


def test_an_ipv6_address_binds_an_ipv6_socket() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    telemetry = Telemetry.from_settings(Settings(metrics_bind_address="::1", metrics_port=free_port()))
    telemetry.serve()
    try:
        assert telemetry.bound_address[0] == "::1"
        assert healthz("[::1]", telemetry.port) == 200
    finally:
        telemetry.close()
