"""The /metrics, /healthz and /readyz server as the kubelet and scanners see it (issue 11): liveness
is the event loop's, slow or idle connections are closed, connections are bounded, no banner."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request

from autoscaler.telemetry import Telemetry


def _status(port: int, path: str = "/healthz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_healthz_fails_while_the_event_loop_is_blocked_and_recovers() -> None:
    async def scenario() -> list[tuple[float, int]]:
        telemetry = Telemetry(port=0, host="127.0.0.1", liveness_seconds=0.5)
        await telemetry.start()
        seen: list[tuple[float, int]] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                seen.append((time.monotonic(), _status(telemetry.port)))
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            await asyncio.sleep(0.3)
            time.sleep(1.5)  # a stalled loop: a blocking call, a runaway computation
            await asyncio.sleep(0.6)
        finally:
            stop.set()
            await asyncio.to_thread(prober.join)
            await telemetry.stop()
        return seen

    seen = asyncio.run(scenario())
    statuses = [s for _, s in seen]
    assert statuses[0] == 200
    assert 503 in statuses  # within the bound of the stall
    assert statuses[-1] == 200  # and healthy again once the loop runs


def test_an_idle_connection_is_closed_after_the_read_timeout() -> None:
    telemetry = Telemetry(port=0, host="127.0.0.1", read_timeout_seconds=0.3)
    telemetry.serve()
    try:
        with socket.create_connection(("127.0.0.1", telemetry.port), timeout=3) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # the server hung up
            assert time.monotonic() - started < 2.5
    finally:
        telemetry.close()


def test_connections_over_the_bound_are_refused_and_probes_answer_again_once_slots_free() -> None:
    telemetry = Telemetry(port=0, host="127.0.0.1", read_timeout_seconds=0.5, max_connections=2)
    telemetry.serve()
    held = [socket.create_connection(("127.0.0.1", telemetry.port), timeout=3) for _ in range(2)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", telemetry.port), timeout=3) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(64) == b""  # closed at once, not queued behind the idle ones
        time.sleep(1.0)  # the idle ones time out
        assert _status(telemetry.port) == 200
    finally:
        for sock in held:
            sock.close()
        telemetry.close()


def test_no_version_banner() -> None:
    telemetry = Telemetry(port=0, host="127.0.0.1")
    telemetry.serve()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{telemetry.port}/healthz", timeout=2) as response:
            assert response.headers.get("Server") is None
            assert "Python" not in str(response.headers)
    finally:
        telemetry.close()
