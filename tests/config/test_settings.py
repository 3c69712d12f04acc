"""The operator's settings: defaults, the environment, and no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autoscaler.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [k for k in os.environ if k.startswith("AUTOSCALER_")]:
        monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.policy_dir == Path("/etc/gpu-autoscaler/policies")
    assert (s.allowed_policy_modules, s.namespaces) == ([], [])
    assert (s.cluster_name, s.resync_seconds, s.metrics_port) == ("default", 30.0, 9102)
    assert (s.dry_run, s.log_format, s.leader_election) == (False, "json", True)


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        # a comma-separated list, as people type it
        (
            "ALLOWED_POLICY_MODULES",
            "acme.policies, other ,",
            "allowed_policy_modules",
            ["acme.policies", "other"],
        ),
        # a JSON list, as tools write it
        ("NAMESPACES", '["ml", "batch"]', "namespaces", ["ml", "batch"]),
        # an empty value is an empty list
        ("NAMESPACES", "", "namespaces", []),
        ("POLICY_DIR", "/tmp/p", "policy_dir", Path("/tmp/p")),
        ("DRY_RUN", "true", "dry_run", True),
        ("LOG_FORMAT", "text", "log_format", "text"),
        ("RESYNC_SECONDS", "2.5", "resync_seconds", 2.5),
        ("LEADER_ELECTION", "0", "leader_election", False),
    ],
)
def test_from_environment(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, attribute: str, expected: object
) -> None:
    monkeypatch.setenv(f"AUTOSCALER_{name}", value)
    assert getattr(Settings(), attribute) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # only json or text
        ("LOG_FORMAT", "xml"),
        # a port is 1..65535
        ("METRICS_PORT", "70000"),
        # a resync period of zero would spin
        ("RESYNC_SECONDS", "0"),
        # settings are logged: credentials go in the env var a trigger names
        ("PROMETHEUS_URL", "http://admin:hunter2@prometheus:9090"),
        # a leader must give up before anyone may take over
        ("LEASE_RENEW_DEADLINE_SECONDS", "20"),
    ],
)
def test_invalid_environment(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"AUTOSCALER_{name}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_no_field_can_hold_a_secret() -> None:
    # Secrets come from the env var a policy names, never from settings, so printing them is safe.
    # `prometheus_url` is the one URL, and it refuses userinfo (see test_invalid_environment);
    # `allowed_secret_env` holds the names of variables, each VARIABLE:option (validated).
    for name in Settings.model_fields.keys() - {"prometheus_url", "allowed_secret_env"}:
        assert not any(word in name for word in ("password", "token", "secret", "url", "key"))


@pytest.mark.parametrize("entry", ["RABBITMQ_URL", "RABBITMQ_URL:tokenFrom", "lower-case:connectionFromEnv"])
def test_allowed_secret_env_entries_bind_a_variable_to_an_option(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOSCALER_ALLOWED_SECRET_ENV", f"PROMETHEUS_TOKEN:tokenFromEnv,{entry}")
    with pytest.raises(ValidationError, match="is not VARIABLE:option"):
        Settings()


# ---- member clusters (issue 12) -----------------------------------------------------------------


def test_no_member_clusters_is_the_home_cluster_alone() -> None:
    s = Settings(cluster_name="vks-1", kubeconfig="/k/home")
    assert s.clusters == []
    assert [(m.name, m.kubeconfig, m.context) for m in s.members()] == [("vks-1", "/k/home", None)]


def test_member_clusters_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_CLUSTER_NAME", "vks-1")
    monkeypatch.setenv(
        "AUTOSCALER_CLUSTERS",
        '[{"name": "vks-2", "kubeconfig": "/etc/members/vks-2"}, {"name": "vks-3", "context": "vks-3"}]',
    )
    members = Settings().members()
    # The home cluster first, reached as without members (in-cluster here), then the others.
    assert [(m.name, m.kubeconfig, m.context) for m in members] == [
        ("vks-1", None, None),
        ("vks-2", "/etc/members/vks-2", None),
        ("vks-3", None, "vks-3"),
    ]


def test_member_clusters_from_a_yaml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    listed = tmp_path / "clusters.yaml"
    listed.write_text("- {name: home, kubeconfig: /k/home}\n- {name: vks-2, kubeconfig: /k/vks-2}\n")
    monkeypatch.setenv("AUTOSCALER_CLUSTERS", str(listed))
    s = Settings(cluster_name="home")
    # The home cluster listed says how to reach it.
    assert [(m.name, m.kubeconfig) for m in s.members()] == [("home", "/k/home"), ("vks-2", "/k/vks-2")]


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        # a member other than the home cluster cannot use the pod's own service account
        ('[{"name": "vks-2"}]', "cluster 'vks-2' needs a kubeconfig or a context"),
        (
            '[{"name": "a", "context": "a"}, {"name": "a", "context": "b"}]',
            "cluster 'a' is listed twice",
        ),
        ('[{"name": "a", "context": "a", "token": "x"}]', "Extra inputs are not permitted"),
        ("/no/such/file.yaml", "not a JSON list, nor a readable file"),
    ],
)
def test_member_clusters_refused(monkeypatch: pytest.MonkeyPatch, clusters: str, message: str) -> None:
    monkeypatch.setenv("AUTOSCALER_CLUSTERS", clusters)
    with pytest.raises(ValidationError, match=message):
        Settings()
