# The Redis of the chart on kind (tools/kind/images.sh): Debian bookworm's redis-server, run as
# uid/gid 999 as the chart's securityContext says, data in /data (the chart mounts it).
ARG DEBIAN=fleet-limiter/debian:bookworm
FROM ${DEBIAN}
RUN groupadd --system --gid 999 redis \
 && useradd --system --uid 999 --gid 999 --home-dir /data --no-create-home --shell /usr/sbin/nologin redis \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 999 -g 999 /data
USER 999:999
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
