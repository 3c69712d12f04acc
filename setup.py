"""Build hook for one option: `AUTOSCALER_COMPILE=1` compiles the engine's hot modules with mypyc.

    AUTOSCALER_COMPILE=1 pip install --no-build-isolation .       # mypy (the dev extra) installed
    AUTOSCALER_COMPILE=1 python setup.py build_ext --inplace      # in a scratch copy of the tree

Everything else about the package is in pyproject.toml. Without the variable (every editable
install, the README's set-up) nothing is compiled and the package is pure Python. The image
compiles (Dockerfile): at 10,000 workloads the full reconcile takes about 40 % of the interpreted
CPU time and the incremental one about half (benchmarks/engine.py prints which engine it ran).

The modules compiled are the engine's per-workload stages, the limits stage, the engine's types and
the default policy: pure, typed (`mypy --strict`), and where a reconcile spends its time. Compiling
`engine.types` makes its dataclasses native classes, whose fields the compiled stages read directly
instead of looking them up by name (a few per cent of a full reconcile); Python code,
third-party policies included, builds and reads them as before. Pydantic models stay interpreted
(`queue_sla_options` holds queue-sla's for that). The compiled modules' semantics are the
interpreted ones, checked by running the whole test suite against them in CI (.ci/run). What mypyc
does not allow there: replacing a module's function from outside (a compiled module calls its
functions directly) and `cls.__new__(cls)` without `__init__`. A compiled frozen dataclass cannot
be restored field by field either, so those of the compiled modules derive from
`engine.types.Frozen`, which pickles and copies them through their constructor.

An in-place build leaves .so files beside the sources, which Python imports before the .py files:
after editing a compiled module, delete them (`find autoscaler -name '*.so' -delete`) or build again.
"""

import os

from setuptools import setup

COMPILED = [
    "autoscaler/engine/behavior.py",
    "autoscaler/engine/incremental.py",
    "autoscaler/engine/limits.py",
    "autoscaler/engine/placement.py",
    "autoscaler/engine/reconcile.py",
    "autoscaler/engine/types.py",
    "autoscaler/policies/queue_sla.py",
]

ext_modules = []
if os.environ.get("AUTOSCALER_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
