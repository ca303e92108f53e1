# One image, two entrypoints:
#   fleet-limiter serve ...          a limiter instance (what the operator runs in each fleet pod)
#   python -P -m limiter_operator    the kopf operator (the chart's default operator.command)
#
# Build and push it, then point the chart at it:
#   docker build -t registry.example/fleet-limiter:0.1.0 .
#   docker push registry.example/fleet-limiter:0.1.0
#   helm install fleet-limiter charts/fleet-limiter --set image.repository=registry.example/fleet-limiter
#
# It runs as a non-root user (65532, as the chart's securityContext says) on a read-only root
# filesystem: nothing is written at run time (no bytecode, no temp files).
#
# BASE is any Python 3.11 image with venv: the official python:3.11-slim by default; `make image`
# builds one here from Debian packages when no registry serves it (tools/kind/images.sh).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fleet-limiter
WORKDIR /src
# The package metadata first, so the dependency layer is cached across source changes.
COPY pyproject.toml README.md ./
COPY limiter ./limiter
COPY operator ./operator
RUN /opt/fleet-limiter/bin/pip install . \
 && /opt/fleet-limiter/bin/python -P -c "import limiter.cli, limiter_operator.main"

FROM ${BASE}
RUN groupadd --system --gid 65532 fleet \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin fleet
COPY --from=build /opt/fleet-limiter /opt/fleet-limiter
ENV PATH=/opt/fleet-limiter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /
# 8080: the limiter's HTTP API (GET /ready, /health, /metrics, /api/...); 8081: the operator's /healthz.
EXPOSE 8080 8081
CMD ["fleet-limiter", "--help"]
