"""A real Prometheus (Debian's package) that scrapes a loopback target every second, for the
dashboard test. `tests/integration/servers.py` starts Prometheus with no scrape targets (its tests
backfill blocks); this one only differs in the config it writes, so it reuses that module's ports.

Skips only when the binary is missing and `CI` is unset: `.ci/run` installs the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.servers import free_port


def need_prometheus() -> None:
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    message = "prometheus is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the dashboard test")
    pytest.skip(message)


@dataclass
class ScrapingPrometheus:
    base: Path
    target: str  # host:port of the /metrics to scrape
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        config = self.base / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: gpu-autoscaler\n"
            f"    static_configs: [{{targets: ['{self.target}']}}]\n"
        )
        log = (self.base / "server.out").open("ab")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        tail = (self.base / "server.out").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"prometheus did not start:\n{tail}")

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
