# The Python base built here when no registry serves python:3.11-slim (tools/kind/images.sh):
# Debian bookworm's Python 3.11 with venv, `python` on PATH as in the official image.
ARG DEBIAN=fleet-limiter/debian:bookworm
FROM ${DEBIAN}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv python-is-python3 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
