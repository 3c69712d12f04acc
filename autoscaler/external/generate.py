"""Regenerate `externalscaler_pb2.py` and `externalscaler_pb2.pyi` from `externalscaler.proto`.

    python -m autoscaler.external.generate [OUTPUT_DIR]

Needs grpcio-tools (the `dev` extra), which bundles protoc; nothing at run time does. The generated
files are committed: the image and a pip install then need no protoc and no build step, at the cost
of this command after a change to the proto (tests/external compares a fresh generation with the
committed files, so a forgotten run fails the suite) and of a protobuf runtime at least as new as
the protoc that generated them (pyproject's `protobuf>=` floor). Callers: developers, tests/external.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
PROTO = HERE / "externalscaler.proto"


def generate(out_dir: Path = HERE) -> None:
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
