"""Every shipped policy file validates clean, and every broken one fails with the exact location.

The broken corpus lives in tests/config/broken/: one file (or, for cross-file problems, one
directory) per case, each opening with a comment that says what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.config import load_config

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
BROKEN = Path(__file__).resolve().parent / "broken"

# entry -> expected errors as (file within the entry, line, field, start of the message).
# The list is complete: an entry must produce exactly these errors, no more.
CASES: dict[str, list[tuple[str, int, str, str]]] = {
    # a mis-indented mapping key: one YAML error at the offending line
    "bad-yaml-syntax.yaml": [("", 9, "yaml", "expected <block end>")],
    # a word where an integer belongs
    "wrong-type.yaml": [("", 6, "spec.maxReplicas", "must be an integer, not 'many'")],
    # a typo gets a suggestion, and the field it hides is not also reported missing
    "unknown-field.yaml": [
        ("", 9, "spec.pools[0].gpuTyp", "unknown field 'gpuTyp'; did you mean 'gpuType'?"),
    ],
    # a missing field is reported at the line of its parent (the pool)
    "missing-required.yaml": [("", 8, "spec.pools[1].deployment", "required field is missing")],
    # an apiVersion from another release
    "bad-api-version.yaml": [("", 2, "apiVersion", "unsupported apiVersion 'gpu-autoscaler/v1'")],
    # a kind that does not exist, with a suggestion
    "unknown-kind.yaml": [("", 3, "kind", "unknown kind 'ScalingPolicies'")],
    # minReplicas above maxReplicas
    "min-greater-than-max.yaml": [("", 6, "spec.minReplicas", "10 is greater than maxReplicas 5")],
    # the same workload in two files: the second is wrong, and the message names the first
    "duplicate-workload": [
        (
            "b.yaml",
            6,
            "metadata.name",
            f"workload 'ml/demo' is already defined at {BROKEN / 'duplicate-workload' / 'a.yaml'}:4",
        )
    ],
    # one workload name in two namespaces: the engine keys workloads by name alone
    "same-name-two-namespaces": [
        (
            "b.yaml",
            7,
            "metadata.name",
            "workload name 'demo' is already used by workload 'ml/demo' at "
            f"{BROKEN / 'same-name-two-namespaces' / 'a.yaml'}:4; workload names must be unique "
            "across namespaces: rename one of them",
        )
    ],
    # two triggers with one name
    "duplicate-trigger.yaml": [
        ("", 10, "spec.triggers[1].name", "trigger name 'backlog' is already used by triggers[0]")
    ],
    # a policy type the registry does not know
    "unknown-policy-type.yaml": [("", 11, "spec.policy.type", "unknown policy type 'queue-slaa'")],
    # python: from a module the operator did not allow
    "disallowed-python.yaml": [("", 11, "spec.policy.python", "module 'os.path' is not allowed")],
    # a regular pool's GPU type that its cluster does not list
    "gpu-type-not-in-cluster.yaml": [
        ("", 7, "spec.pools[0].gpuType", "GPU type 'V100' is not among the gpuTypes of cluster 'vks-1'")
    ],
    # a cluster ParallelismLimits does not list, with a suggestion
    "unknown-cluster.yaml": [("", 10, "spec.pools[0].cluster", "unknown cluster 'vks1'")],
    # two ParallelismLimits documents: the error is at the second
    "two-limits.yaml": [("", 8, "kind", "a second ParallelismLimits document")],
    # MessageRate over AMQP; reported at the trigger since protocol is absent
    "message-rate-without-http.yaml": [
        ("", 9, "spec.triggers[0].protocol", "mode MessageRate needs protocol: http")
    ],
    # queue and queues both given
    "queue-and-queues.yaml": [("", 12, "spec.triggers[0].queues", "give either 'queue' or 'queues'")],
    # a document that is a list
    "not-a-mapping.yaml": [("", 7, "document", "expected a mapping")],
    # a key given twice in one mapping
    "duplicate-key.yaml": [("", 13, "spec.behavior.scaleDown", "duplicate key (first at line 11)")],
    # one Deployment in two workloads
    "duplicate-deployment.yaml": [
        (
            "",
            17,
            "spec.pools[1].deployment",
            "Deployment 'ml/shared-a100' is already managed by spec.pools[0]",
        )
    ],
    # two problems in one pool, each at its own field
    "pool-inconsistent.yaml": [
        ("", 9, "spec.pools[0].provider", "only virtual pools have a provider"),
        ("", 12, "spec.pools[0].startupP95Seconds", "120 is below startupSeconds 300"),
    ],
    # an unknown trigger type and a literal in the wrong case, both reported in one pass
    "unknown-trigger-type.yaml": [
        (
            "",
            7,
            "spec.pools[0].nodeClass",
            "must be 'regular' or 'virtual', not 'Regular'; did you mean 'regular'?",
        ),
        ("", 9, "spec.triggers[0].type", "unknown type 'kafka'; expected 'rabbitmq' or 'prometheus'"),
    ],
    # the policy's own options model: every bad option, with suggestions
    "bad-policy-options.yaml": [
        (
            "",
            12,
            "spec.policy.maxWaitSecond",
            "unknown field 'maxWaitSecond'; did you mean 'maxWaitSeconds'?",
        ),
    ],
    # queue-sla needs a service rate from somewhere: profiled, or learned from deliveries
    "queue-sla-no-service-rate.yaml": [
        (
            "",
            10,
            "spec.policy",
            "give serviceRatePerReplica (requests/s one replica completes, from profiling) or "
            "deliveryTrigger (a DeliverGetRate trigger to learn it from), or both",
        )
    ],
    # the policy's check() cross-checks its trigger names against the workload
    "policy-unknown-trigger.yaml": [("", 10, "spec.policy.backlogTrigger", "no trigger named 'backlog'")],
    # names Kubernetes refuses, an empty pool list, a zero weight
    "bad-names.yaml": [
        ("", 4, "metadata.name", "'Demo_Chat' is not a Kubernetes name"),
        ("", 6, "spec.weight", "must be at least 0.001, not 0"),
        ("", 7, "spec.pools", "must not be empty"),
        ("", 9, "spec.triggers[0].connectionFromEnv", "'rabbit-url' is not an environment variable name"),
    ],
    # inference presets (issue 13): a level given a count target, or a percentage for a fraction
    "preset-level-with-count-target.yaml": [
        (
            "",
            14,
            "spec.triggers[0].targetPerReplica",
            "vllm kvCacheUsage is a level (a fraction, 1 = full) held for the whole workload: "
            "set target, not targetPerReplica",
        ),
        ("", 15, "spec.triggers[1].target", "80 is above 1, the most kvCacheUsage can read"),
    ],
    # a metric the server does not export
    "preset-unknown-metric.yaml": [
        ("", 11, "spec.triggers[0].metric", "must be 'pending' or 'queueDuration', not 'kvCacheUsage'")
    ],
    # no pods named (at the trigger, since no scope field is there), and a count with no default
    "preset-missing-scope.yaml": [
        ("", 9, "spec.triggers[0].deployment", "required: say which pods to read"),
        ("", 12, "spec.triggers[1].targetPerReplica", "required for running: the requests one replica"),
    ],
    # label values that cannot become PromQL, each at its own line
    "preset-bad-labels.yaml": [
        ("", 13, "spec.triggers[0].pod", "not a regular expression"),
        ("", 15, "spec.triggers[0].selector.model", "holds a control character '\\n'"),
        ("", 17, "spec.triggers[1].selector.pod", "'pod' is scoped by 'pod' or 'deployment'"),
    ],
}

# Workloads that stay valid next to the broken ones (the first definition of a clashing pair).
SURVIVORS: dict[str, list[str]] = {
    "duplicate-workload": ["ml/demo"],
    "same-name-two-namespaces": ["ml/demo"],
    "duplicate-deployment.yaml": ["ml/chat"],
}


def corpus_entries() -> list[str]:
    return sorted(p.name for p in BROKEN.iterdir() if p.is_dir() or p.suffix in (".yaml", ".yml"))


def test_every_corpus_entry_has_a_case() -> None:
    assert corpus_entries() == sorted(CASES)
    assert len(CASES) >= 14


@pytest.mark.parametrize("entry", sorted(CASES))
def test_broken_file_reports_exact_location(entry: str) -> None:
    path = BROKEN / entry
    config = load_config([path])
    got = [str(e) for e in config.errors]
    for file, line, field, message in CASES[entry]:
        shown = path / file if file else path
        prefix = f"{shown}:{line}: {field}: "
        assert any(g.startswith(prefix + message) for g in got), f"no '{prefix}{message}...' in {got}"
    assert len(got) == len(CASES[entry]), got
    # Only documents without any error yield a workload: here, the first of a clashing pair.
    assert [f"{w.namespace}/{w.name}" for w in config.workloads] == SURVIVORS.get(entry, [])


SHIPPED = sorted(p for p in POLICIES.rglob("*") if p.suffix in (".yaml", ".yml"))
# Each directory of shipped files is one deployment's config (its own ParallelismLimits).
SHIPPED_DIRS = sorted({p.parent for p in SHIPPED})


def test_there_are_shipped_policy_files() -> None:
    assert SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(POLICIES)))
def test_shipped_policy_file_is_clean(path: Path) -> None:
    config = load_config([path])
    assert [str(e) for e in config.errors] == []
    assert config.workloads


@pytest.mark.parametrize("directory", SHIPPED_DIRS, ids=lambda p: str(p.relative_to(POLICIES)) or ".")
def test_shipped_policy_directory_is_clean_as_a_whole(directory: Path) -> None:
    # Files that are fine alone can still clash (a workload or Deployment defined twice).
    config = load_config([directory])
    assert [str(e) for e in config.errors] == []
    assert len(config.files) == len([p for p in SHIPPED if p.parent == directory])
