"""The `autoscaler` command: thin argument parsing that hands off to the module owning each job.

Imports are deferred into each sub-command so that `autoscaler validate` does not pay for the
simulator or matplotlib, and a missing optional extra breaks only the command that needs it.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence


def _validate(args: argparse.Namespace) -> int:
    from autoscaler.config.validate import validate_main

    return validate_main(args.paths)


def _schema(args: argparse.Namespace) -> int:
    from autoscaler.config.validate import schema_main

    return schema_main()


def _simulate(args: argparse.Namespace) -> int:
    from autoscaler.sim.cli import simulate_main

    return simulate_main(args)


def _run(args: argparse.Namespace) -> int:
    from autoscaler.app import run_main

    return run_main(args.policies, dry_run=args.dry_run, once=args.once, assume_replicas=args.assume_replicas)


def _explain(args: argparse.Namespace) -> int:
    from autoscaler.sim.cli import explain_main

    return explain_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoscaler", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check policy files; problems print as file:line: field: message")
    p.add_argument("paths", nargs="+", help="policy files or directories of *.yaml")
    p.set_defaults(func=_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of policy files (for editors)")
    p.set_defaults(func=_schema)

    p = sub.add_parser("simulate", help="replay a real trace through the engine against a simulated cluster")
    from autoscaler.sim.cli import add_simulate_arguments

    add_simulate_arguments(p)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("run", help="the live controller: read the triggers, decide, resize")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and log, never write; reads the cluster if one is configured, else an in-memory one",
    )
    p.add_argument(
        "--policies", nargs="+", metavar="PATH", help="policy files or directories (default: the policy dir)"
    )
    p.add_argument("--once", action="store_true", help="one decision after the first readings, then exit")
    p.add_argument(
        "--assume-replicas",
        type=int,
        metavar="N",
        help="in-memory dry run: start each workload at N replicas of its first pool (default: minReplicas)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("explain", help="why the last decision for a workload was what it was")
    p.add_argument("workload")
    p.add_argument("--log", default="sim-results/decisions.jsonl", help="decision log to read")
    p.add_argument("--at", type=float, default=None, help="the decision at or before this time (seconds)")
    p.set_defaults(func=_explain)
    return parser


def tune_gc() -> None:
    """Fewer, larger young-generation collections. A reconcile allocates a few short-lived objects per
    workload; at the default threshold (700) CPython collects hundreds of times per reconcile of a big
    fleet and re-walks the long-lived policy specs each time (benchmarks/engine.py shows the cost)."""
    gc.set_threshold(50_000, 20, 20)


def main(argv: Sequence[str] | None = None) -> int:
    tune_gc()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        # numpy comes with the `sim` extra only (the image has no simulator): say what to install.
        if exc.name != "numpy":
            raise
        print(
            f"autoscaler {args.command} needs numpy, from the simulator's extra: "
            "pip install 'gpu-autoscaler[sim]'",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
