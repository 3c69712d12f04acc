"""The image installs the core dependencies only, without numpy: numpy is the simulator's (the `sim`
extra). So every module the live controller, `autoscaler validate` and `autoscaler run` use must
import, and those commands must work, with numpy absent; `autoscaler simulate` without it says
which extra to install instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.deploy.conftest import ROOT

# Run in a fresh interpreter with numpy made unimportable (None in sys.modules), as in the image.
NO_NUMPY = "import sys; sys.modules['numpy'] = None\n"


def run_without_numpy(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_NUMPY + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_numpy_is_the_simulators_dependency_not_the_cores() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("numpy") for d in project["dependencies"])
    assert any(d.startswith("numpy") for d in project["optional-dependencies"]["sim"])


def test_every_module_outside_the_simulator_imports_without_numpy() -> None:
    done = run_without_numpy(
        """
import importlib, pkgutil, autoscaler
names = [m.name for m in pkgutil.walk_packages(autoscaler.__path__, "autoscaler.")
         if not m.name.startswith("autoscaler.sim.")
         and m.name not in ("autoscaler.sim", "autoscaler.__main__")]  # __main__ would run the CLI
for name in names:
    importlib.import_module(name)
assert "autoscaler.live" in names and "autoscaler.controller" in names, names
print(len(names))
"""
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 20


def test_validate_and_the_run_parser_work_without_numpy() -> None:
    done = run_without_numpy(
        f"""
from autoscaler.cli import build_parser, main
assert main(["validate", {str(ROOT / "policies" / "salad")!r}]) == 0
args = build_parser().parse_args(["run", "--dry-run", "--once"])
assert args.dry_run and args.once
"""
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_simulate_without_numpy_names_the_extra_to_install() -> None:
    done = run_without_numpy(
        """
from autoscaler.cli import main
raise SystemExit(main(["simulate"]))
"""
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'gpu-autoscaler[sim]'" in done.stderr
    assert "Traceback" not in done.stderr
