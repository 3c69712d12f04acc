"""Rendering the kustomize trees with the real `kubectl kustomize`, once per test session.

Tests skip only when kubectl is missing and `CI` is unset; in CI a missing kubectl is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists())
TREES = ["base", ".", *(f"overlays/{name}" for name in OVERLAYS)]

# Kubernetes' schemas as kubernetes-validate bundles them; 1.30 and later know every field used here.
KUBERNETES_VERSION = "1.32.0"
# Custom resources: no schema bundled (the tests that ship them check them by hand).
CRDS = ("keda.sh/", "monitoring.coreos.com/")

_rendered: dict[str, list[dict[str, Any]]] = {}


def need(binary: str, install: str) -> str:
    path = shutil.which(binary)
    if path is not None:
        return path
    message = f"{binary} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the deployment tests")
    pytest.skip(message)


def render(tree: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes/<tree>` would send, in kustomize's order."""
    if tree not in _rendered:
        kubectl = need("kubectl", "the machine image ships it")
        done = subprocess.run(
            [kubectl, "kustomize", str(KUSTOMIZE / tree)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"kubectl kustomize {tree}:\n{done.stderr}"
        _rendered[tree] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return _rendered[tree]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def invalid(objects: list[dict[str, Any]]) -> list[str]:
    """`Kind/name: why` for every object the Kubernetes schemas refuse (custom resources skipped)."""
    import kubernetes_validate

    out = []
    for obj in objects:
        if obj["apiVersion"].startswith(CRDS):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            out.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return out
