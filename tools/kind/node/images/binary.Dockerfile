# A node component image (tools/kind/node-image.sh): the Debian base, the Debian PACKAGES it needs
# and its binaries (bin/) in /usr/local/bin. Its pods name the command (kubeadm's static pods do).
ARG DEBIAN=fleet-limiter/debian:bookworm
FROM ${DEBIAN}
ARG PACKAGES=""
RUN if [ -n "$PACKAGES" ]; then apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES \
      && rm -rf /var/lib/apt/lists/*; fi
COPY bin/ /usr/local/bin/
