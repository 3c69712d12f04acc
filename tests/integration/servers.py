"""Real RabbitMQ and Prometheus servers on loopback, started from Debian's packages for tests.

Each server gets free ports, its own data directory under a temporary directory and (for RabbitMQ)
a node name unique to this process, so a run never touches a system-wide broker or another run's.
Callers: the session fixtures in `tests/integration/conftest.py` and `benchmarks/reaction.py`, which
starts its own broker. Deliberately independent of the `autoscaler` package: this module starts
servers, nothing else.

We run as root in CI; RabbitMQ refuses nothing as root, but the Debian wrapper switches to the
`rabbitmq` user, so we call the real scripts directly as that user (`subprocess`'s `user=`) with a
HOME of our own: the Erlang cookie then lives in our directory and `rabbitmqctl` finds it.
"""

from __future__ import annotations

import base64
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def binaries_present() -> dict[str, bool]:
    return {
        "rabbitmq": (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("rabbitmqctl") is not None,
        "prometheus": shutil.which("prometheus") is not None and shutil.which("promtool") is not None,
    }


def need(kind: str) -> None:
    """Skip when `kind`'s binaries are missing, except in CI (`CI` set), where `.ci/run` installs them
    and a missing one is a failure."""
    import pytest  # here, not at the top: benchmarks/reaction.py starts its broker with this module

    if binaries_present()[kind]:
        return
    message = f"{kind} binaries are not installed (apt-get install -y rabbitmq-server prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the tests that need them")
    pytest.skip(message)


def free_port(low: int = 20000, high: int = 30000) -> int:
    """A free loopback port in a low range: RabbitMQ derives more ports from its own (distribution
    port + 10000 for the CLI tools), which must stay below 65536."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _wait_http(url: str, deadline: float, headers: dict[str, str] | None = None) -> None:
    last: Exception | None = None
    request = urllib.request.Request(url, headers=headers or {})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready: {last}")


@dataclass
class RabbitMQServer:
    """One broker node with the management plugin. `start()` returns once AMQP and the management API
    answer; `stop()` is graceful (`rabbitmqctl stop`), so durable queues survive a restart."""

    base: Path
    amqp_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(
        default_factory=lambda: f"rabbit-test-{os.getpid()}-{random.randrange(10**6)}@localhost"
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.base),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "rabbit.pid"),
        )
        return env

    def _prepare(self) -> None:
        if (self.base / "rabbitmq.conf").exists():
            return
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # `collect_statistics_interval` is left at its default (5 s): with a shorter one this
            # version's management API stopped reporting queue counters at all. Tests wait for them.
            "log.console = false\n"
        )
        # What `rabbitmq-plugins --offline enable rabbitmq_management` writes, without its 2 s start.
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        user = pwd.getpwnam("rabbitmq") if os.geteuid() == 0 else None
        if user is not None:
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def _run_as(self) -> str | None:
        """The user and group (of the same name) RabbitMQ's scripts run as: as root they switch to
        `rabbitmq` themselves, so they are started as it; None: as this process."""
        return "rabbitmq" if os.geteuid() == 0 else None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self._run_as(),
            group=self._run_as(),
        )

    def start(self, timeout: float = 60) -> None:
        self._prepare()
        log = (self.base / "server.out").open("ab")
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=self._run_as(),
            group=self._run_as(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        # `await_startup` gives up at once while the node is not registered yet; `wait PIDFILE` first
        # waits for the node to write its pid file, then for the boot to finish.
        done = self.ctl(
            "wait", "--timeout", str(int(timeout)), str(self.base / "rabbit.pid"), timeout=timeout + 5
        )
        if done.returncode != 0:
            tail = (self.base / "server.out").read_text(errors="replace")[-3000:]
            self.kill()
            raise RuntimeError(f"rabbitmq did not start: {done.stdout}{done.stderr}\n{tail}")
        guest = base64.b64encode(b"guest:guest").decode()
        _wait_http(
            f"http://127.0.0.1:{self.management_port}/api/overview",
            deadline,
            {"Authorization": f"Basic {guest}"},
        )

    def stop(self) -> None:
        if self.process is None:
            return
        # SIGTERM makes the node shut down as gracefully as `rabbitmqctl stop` (durable queues and
        # their messages are kept), without the seconds a CLI tool takes to boot its own VM.
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class PrometheusServer:
    """One Prometheus serving whatever blocks `backfill` wrote, and scraping `scrape_target`
    (host:port of a /metrics endpoint) every second when one is given."""

    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    scrape_target: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def backfill(self, openmetrics: str) -> None:
        """Write TSDB blocks from OpenMetrics text (must end with `# EOF`); call before `start`, since
        a running Prometheus only picks up new blocks at its next compaction."""
        self.data.mkdir(parents=True, exist_ok=True)
        source = self.base / "backfill.om"
        source.write_text(openmetrics)
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.data)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, timeout: float = 30) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.base / "prometheus.yml"
        if self.scrape_target is None:
            config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        else:
            config.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: gpu-autoscaler\n"
                f"    static_configs: [{{targets: ['{self.scrape_target}']}}]\n"
            )
        log = (self.base / "server.out").open("ab")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_http(f"{self.url}/-/ready", time.monotonic() + timeout)
        except TimeoutError:
            tail = (self.base / "server.out").read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"prometheus did not start:\n{tail}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def backfilled_prometheus(
    openmetrics: str, prefix: str = "autoscaler-prometheus-"
) -> Iterator[PrometheusServer]:
    """A running Prometheus whose blocks hold `openmetrics` (which must end with `# EOF`), in a
    temporary directory removed afterwards."""
    need("prometheus")
    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = PrometheusServer(base)
    server.backfill(openmetrics)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
