# EHDS federation: one image for the coordinator and the node (`ehds coordinator serve`,
# `ehds node serve`), in two flavours:
#
#   docker build --target runtime       -t ghcr.io/ehds-federation/ehds:0.1.0       .
#   docker build --target runtime-spark -t ghcr.io/ehds-federation/ehds:0.1.0-spark .
#
# `runtime` is the last stage, hence the default. Needs BuildKit (the default builder since
# Docker 23) for the bind mount in `runtime-spark`. See docs/operations/image.md.
#
# The base image is pinned by its exact tag. Operators should pin the digest they verified
# (python:3.11.14-slim-bookworm@sha256:...), e.g. with `--build-arg PYTHON_BASE=...`; this
# repository's CI lints the file offline and cannot resolve digests. The Python minor version
# must stay the one of `[tool.mypy] python_version` (tests/operations/test_dockerfile.py).
ARG PYTHON_BASE=python:3.11.14-slim-bookworm
# The project's version ([project] version in pyproject.toml); the install below asks for
# exactly this version, so a stale default fails the build instead of mislabelling the image.
ARG EHDS_VERSION=0.1.0

# ---------------------------------------------------------------------------------------------
# builder: compilers live here only. Builds a wheel of the project and of every dependency
# (the project's exact pins), spark extra included, then installs the runtime venv from them.
FROM ${PYTHON_BASE} AS builder
ARG EHDS_VERSION

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE .gitignore ./
# Every source root of [tool.hatch.build.targets.wheel] sources.
COPY core/ core/
COPY omop/ omop/
COPY node/ node/
COPY coordinator/ coordinator/
COPY connectors/ connectors/
COPY protos/ protos/
COPY analyses/ analyses/
COPY fl/ fl/

# The venv lives at /opt/ehds here and in the runtime stages (its scripts' shebangs name that
# path). Bytecode is compiled now because the root file system is read-only at run time;
# unchecked-hash .pyc files stay valid whatever the layer export does to file times.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[spark]" \
    && python -m venv /opt/ehds \
    && /opt/ehds/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
        "ehds-federation==${EHDS_VERSION}" \
    && /opt/ehds/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/ehds/lib

# ---------------------------------------------------------------------------------------------
# runtime-base: what both final images share. No compilers, no pip cache, non-root.
FROM ${PYTHON_BASE} AS runtime-base
ARG EHDS_VERSION

LABEL org.opencontainers.image.title="ehds-federation" \
      org.opencontainers.image.description="EHDS federation: study coordinator and OMOP CDM node" \
      org.opencontainers.image.version="${EHDS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ehds-federation/ehds"

# uid/gid 10001: above any uid a host or base image hands out, and numeric in USER below so
# that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 ehds \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin ehds \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/ehds

COPY --from=builder /opt/ehds /opt/ehds

# Writable at run time: /var/lib/ehds (state volume) and /tmp (scratch); nothing else.
ENV PATH="/opt/ehds/bin:${PATH}" \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /var/lib/ehds

# Coordinator: gRPC (mTLS) 50051, token gRPC (OIDC) 50052, health/metrics 9464.
# Node: health/metrics 9465.
EXPOSE 50051 50052 9464 9465

USER 10001:10001
ENTRYPOINT ["ehds"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# runtime-spark: runtime-base + a headless Java 17 JRE + the `spark` extra (PySpark), for nodes
# whose CDM is too large for one machine. Java stays out of the default image: it is ~200 MB of
# attack surface that only the Spark engine uses.
FROM runtime-base AS runtime-spark
ARG EHDS_VERSION

# Root (numeric, as everywhere here) for apt-get; back to 10001 at the end of the stage.
USER 0:0
# /usr/share/man/man1: slim images drop man pages, and the JRE's postinst registers some
# (Debian bug #863199). JAVA_HOME gets an architecture-independent name (amd64, arm64, ...).
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless=17.0.21.1+2-1~deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")" /usr/lib/jvm/java-17
# The wheels (PySpark is published as an sdist only) were built in the builder stage; they are
# bind-mounted, not copied, so that no layer keeps them. Only the new packages are compiled.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    /opt/ehds/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels \
        "ehds-federation[spark]==${EHDS_VERSION}" \
    && /opt/ehds/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        /opt/ehds/lib/python3.11/site-packages/pyspark /opt/ehds/lib/python3.11/site-packages/py4j

ENV JAVA_HOME=/usr/lib/jvm/java-17
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# runtime (default, last stage): the coordinator and the DuckDB/PostgreSQL node; no Java.
FROM runtime-base AS runtime
