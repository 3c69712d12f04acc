# gpu-autoscaler: the live controller (`autoscaler run`) in a small image.
#
#   docker build -t gpu-autoscaler:0.1.0 .
#
# Two stages: the first builds the project's wheel (its hot modules compiled with mypyc unless
# `--build-arg COMPILE=0`) and installs it with its runtime dependencies (no test, dev or simulator
# extras, so no numpy) into a virtual environment, then removes pip and setuptools from it; the
# second copies only that environment onto a fresh slim Python whose own pip it removes too
# (nothing can install code at run time), runs as an unprivileged numeric user (Kubernetes can then
# check runAsNonRoot) and needs no write access to its root filesystem.
#
# The base image is pinned by digest, so a rebuild gets the same bits until someone moves the pin on
# purpose. This is python:3.11-slim's multi-platform index digest as other public projects pin it; it
# could not be checked against Docker Hub from where it was written. Before a release, refresh it
# (and see what changed) with one of
#   docker buildx imagetools inspect python:3.11-slim     # "Digest:" line
#   crane digest python:3.11-slim
# and keep the tag before the @ for readers (the digest alone decides what is pulled). A mirror:
# `--build-arg PYTHON_IMAGE=registry.example.com/library/python:3.11-slim@sha256:...`.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
# Optional runtime extras, e.g. `--build-arg EXTRAS=otlp` for OTLP traces; none by default.
ARG EXTRAS=""
# 1 (the default): the engine's per-workload stages, its limits stage, its types and the default
# policy are compiled with mypyc (setup.py): at 10,000 workloads a full reconcile takes about 40 %
# of the interpreted CPU time and an incremental one about half (benchmarks/engine.py). 0: the
# pure-Python wheel.
ARG COMPILE=1
# The mypy whose mypyc compiles them, as CI tests the compiled modules (.ci/run); it stays in this
# stage, with the C compiler.
ARG MYPY_VERSION=2.4.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# The metadata first, the code after: a code change then reuses nothing but is cheap to rebuild,
# and the wheel build needs no network beyond PyPI and Debian.
COPY pyproject.toml README.md setup.py ./
COPY autoscaler ./autoscaler
# The compiler and the wheel's build tools go into this stage's own Python, never into /opt/venv
# (Debian's gcc is the one the pinned base image's release carries), with the project's runtime
# dependencies: mypyc type-checks what it compiles against them, as CI does (pyproject's mypy
# configuration loads pydantic's plugin). pip builds and installs, then leaves: the environment the
# runtime stage copies has no installer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip install "mypy==${MYPY_VERSION}" setuptools==84.2.1 wheel==0.46.3 . \
    && AUTOSCALER_COMPILE="${COMPILE}" python -m pip wheel --no-build-isolation --no-deps --wheel-dir /dist . \
    && python -m venv /opt/venv \
    && wheel="$(ls /dist/*.whl)" \
    && /opt/venv/bin/pip install "${wheel}${EXTRAS:+[$EXTRAS]}" \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gpu-autoscaler" \
      org.opencontainers.image.description="Event-driven, GPU-, cost- and quota-aware autoscaler for Kubernetes that spills over to virtual nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# No installer at run time: the base image's own pip, setuptools and wheel go as well. A fixed
# numeric UID/GID (10001, outside the range distributions hand out): the Deployment's runAsUser
# names the same one, and runAsNonRoot can be verified without reading /etc/passwd.
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
    && groupadd --system --gid 10001 autoscaler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin autoscaler
COPY --from=build /opt/venv /opt/venv
# No .pyc writes (the root filesystem is read-only in the pod), logs unbuffered (JSON lines).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUTOSCALER_METRICS_PORT=9102 \
    AUTOSCALER_POLICY_DIR=/etc/gpu-autoscaler/policies
USER 10001:10001
WORKDIR /tmp
EXPOSE 9102
# Python itself, so the image needs no curl: /healthz answers while the process is alive.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AUTOSCALER_METRICS_PORT', '9102'), timeout=3)"]
ENTRYPOINT ["autoscaler"]
CMD ["run"]
