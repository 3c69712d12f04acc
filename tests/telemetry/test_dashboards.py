"""The Grafana dashboards in deploy/grafana: well-formed, and every query returns data from a real
Prometheus scraping a running autoscaler.

The autoscaler here is the real engine driven by the simulator over the first minutes of the bundled
scenario (with a trigger outage, so failure panels have something to show), calling
`Telemetry.observe` after every reconcile exactly as the live controller does, paced so that a
Prometheus scraping every second sees the fleet move. Then every expression of every panel, every
annotation and every template variable is run against that Prometheus through its HTTP API.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from autoscaler.engine.reconcile import reconcile
from autoscaler.engine.types import (
    ActionResult,
    ClusterSnapshot,
    EngineState,
    Limits,
    Outcome,
    Plan,
    Reading,
    Reconciled,
    WorkloadSpec,
)
from autoscaler.sim.runner import run
from autoscaler.sim.scenario import Overrides, default_scenario_path, load_scenario
from autoscaler.sim.sources import TriggerOutage
from autoscaler.telemetry import Telemetry
from tests.integration.servers import PrometheusServer, need

DASHBOARDS = sorted((Path(__file__).parents[2] / "deploy" / "grafana").glob("*.json"))
FEED_SECONDS = 5.0  # wall time over which the simulated reconciles are spread
# Windows that hold several 1 s scrapes of a test lasting well under a minute.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus annotation."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return out


def test_there_are_the_three_dashboards() -> None:
    assert {p.stem for p in DASHBOARDS} == {"fleet-overview", "workload", "autoscaler-health"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed_grafana_json(path: Path) -> None:
    d = load(path)
    assert d["schemaVersion"] >= 39
    assert d["uid"] and len(d["uid"]) <= 40
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(d):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()
    for where, expr in expressions(d):
        assert expr.count("(") == expr.count(")"), where
        # Cardinality: the reason label is an enum; nothing may group by a free-text field.
        assert "reason_text" not in expr


def test_uids_are_distinct() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


# ------------------------------------------------------------------------------------------------
# Against a real Prometheus


def feed(telemetry: Telemetry) -> int:
    """Run the first 300 s of the bundled scenario (twice its traffic, so pools spill and caps bind),
    observing every reconcile; returns the number of reconciles."""
    sim = load_scenario(default_scenario_path(), Overrides(window=(0.0, 300.0), scale=2.0))
    sim = dataclasses.replace(
        sim,
        max_drain_seconds=30.0,
        outages=(TriggerOutage("llm-code", "backlog", 100.0, 160.0),),
    )
    ticks = int(300 / sim.tick) + 60
    pause = FEED_SECONDS / ticks
    count = 0

    def decide(
        workloads: Sequence[WorkloadSpec],
        snapshot: ClusterSnapshot,
        readings: Mapping[str, Mapping[str, Reading]],
        state: EngineState,
        limits: Limits,
        now: float,
    ) -> tuple[Plan, EngineState]:
        nonlocal count
        started = time.perf_counter()
        plan, state = reconcile(workloads, snapshot, readings, state, limits, now)
        telemetry.observe(
            Reconciled(
                now=now,
                workloads=workloads,
                limits=limits,
                snapshot=snapshot,
                readings=readings,
                plan=plan,
                duration_seconds=time.perf_counter() - started,
                outcomes=[ActionResult(a, answer(count, i)) for i, a in enumerate(plan.actions)],
            )
        )
        count += 1
        # After the first reconcile the counters exist at 0: let Prometheus scrape them so before any scale
        # action. A counter first seen at a nonzero value shows no increase(), and the first scale
        # actions come within a second of wall time.
        time.sleep(1.5 if count == 1 else pause)
        return plan, state

    run(sim, decide)
    return count


def answer(reconcile: int, action: int) -> Outcome:
    """What the actuator did with an action: mostly written, now and then refused by the API server,
    so that the panel of writes that did not land has something to show. (The simulated cluster
    obeys every plan regardless: these outcomes are the dashboards' data, not the simulation's.)"""
    return Outcome.FAILED if (reconcile + action) % 5 == 0 else Outcome.SCALED


def api(prom: PrometheusServer, path: str, **params: str) -> Any:
    url = f"{prom.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for_scrapes(prom: PrometheusServer, at_least: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = api(prom, "query", query="count_over_time(autoscaler_build_info[1m])")["result"]
        if result and float(result[0]["value"][1]) >= at_least:
            return
        time.sleep(0.25)
    raise AssertionError(f"prometheus did not scrape the autoscaler {at_least} times in {timeout}s")


def variable_values(prom: PrometheusServer, variable: Mapping[str, Any]) -> list[str]:
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query.strip())
    assert match, f"variable {variable['name']}: only label_values(metric, label) is supported here"
    metric, label = match.groups()
    values: list[str] = api(prom, f"label/{label}/values", **{"match[]": metric})
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    for name, value in {**SUBSTITUTIONS, **{f"${k}": v for k, v in values.items()}}.items():
        expr = expr.replace("${" + name.lstrip("$") + "}", value).replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


@dataclasses.dataclass(frozen=True)
class _Cluster:
    """A managed cluster as `kube.fleet` reports it: the home one up, a member partitioned."""

    name: str
    down_since: float | None
    age_seconds: float | None


CLUSTERS = (_Cluster("bench", None, 0.4), _Cluster("vks-2", 1_700_000_000.0, 95.0))


@pytest.fixture(scope="module")
def scraped() -> Iterator[PrometheusServer]:
    need("prometheus")
    telemetry = Telemetry(port=0, host="127.0.0.1")
    telemetry.report_clusters(lambda: CLUSTERS)
    port = telemetry.serve()
    telemetry.set_leader(True)
    telemetry.set_ready(True)
    with tempfile.TemporaryDirectory(prefix="autoscaler-dashboards-") as tmp:
        prom = PrometheusServer(Path(tmp), scrape_target=f"127.0.0.1:{port}")
        prom.start()
        try:
            wait_for_scrapes(prom, 1)
            assert feed(telemetry) > 300
            wait_for_scrapes(prom, int(FEED_SECONDS) + 2)
            yield prom
        finally:
            prom.stop()
            telemetry.close()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_returns_data(scraped: PrometheusServer, path: Path) -> None:
    d = load(path)
    values: dict[str, str] = {}
    for variable in d["templating"]["list"]:
        if variable["type"] == "query":
            found = variable_values(scraped, variable)
            assert found, f"variable {variable['name']} has no values"
            values[variable["name"]] = found[0]
    empty = []
    for where, expr in expressions(d):
        query = substitute(expr, values)
        if not api(scraped, "query", query=query)["result"]:
            empty.append(f"{where}: {query}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_every_workload_has_data_in_the_drill_down(scraped: PrometheusServer) -> None:
    d = load(next(p for p in DASHBOARDS if p.stem == "workload"))
    variable = next(v for v in d["templating"]["list"] if v["name"] == "workload")
    workloads = variable_values(scraped, variable)
    assert set(workloads) == {"llm-code", "llm-conv"}
    for workload in workloads:
        for where, expr in expressions(d):
            query = substitute(expr, {"workload": workload})
            assert api(scraped, "query", query=query)["result"], f"{workload}: {where}: {query}"
