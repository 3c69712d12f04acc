"""The committed gencode is what protoc makes of the committed proto today, and the proto is KEDA's
interface with the field numbers KEDA's client uses."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from autoscaler.external import externalscaler_pb2 as pb
from autoscaler.external.generate import HERE, generate


def test_the_committed_gencode_matches_the_proto(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        if os.environ.get("CI"):
            pytest.fail("grpcio-tools (the dev extra) is missing; CI must check the gencode")
        pytest.skip("grpcio-tools is not installed")
    generate(tmp_path)
    for name in ("externalscaler_pb2.py", "externalscaler_pb2.pyi"):
        assert (tmp_path / name).read_text() == (HERE / name).read_text(), (
            f"autoscaler/external/{name} is stale: run `python -m autoscaler.external.generate`"
        )


def test_the_messages_have_kedas_field_numbers() -> None:
    # What KEDA's Go client (pkg/scalers/externalscaler) puts on the wire: a renumbered field would
    # decode as garbage, silently.
    expected = {
        "ScaledObjectRef": {"name": 1, "namespace": 2, "scalerMetadata": 3},
        "IsActiveResponse": {"result": 1},
        "GetMetricSpecResponse": {"metricSpecs": 1},
        "MetricSpec": {"metricName": 1, "targetSize": 2, "targetSizeFloat": 3},
        "GetMetricsRequest": {"scaledObjectRef": 1, "metricName": 2},
        "GetMetricsResponse": {"metricValues": 1},
        "MetricValue": {"metricName": 1, "metricValue": 2, "metricValueFloat": 3},
    }
    got = {
        name: {f.name: f.number for f in pb.DESCRIPTOR.message_types_by_name[name].fields}
        for name in expected
    }
    assert got == expected
    service = pb.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert {m.name for m in service.methods} >= {"IsActive", "StreamIsActive", "GetMetricSpec", "GetMetrics"}
