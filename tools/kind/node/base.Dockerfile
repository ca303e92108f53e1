# The base of the kind node image built here (tools/kind/node-image.sh): Debian bookworm with systemd,
# Debian's containerd, runc and CNI plugins, and the node's own small files (files/): the entrypoint,
# containerd's config, the kubelet unit. The Kubernetes binaries and images are added on top of it.
ARG DEBIAN=fleet-limiter/debian:bookworm
FROM ${DEBIAN}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      systemd systemd-sysv dbus containerd runc containernetworking-plugins \
      iptables iproute2 ethtool socat conntrack ebtables kmod mount util-linux procps \
      bash ca-certificates libseccomp2 findutils curl \
 && rm -rf /var/lib/apt/lists/* \
 # systemd in a container: no udev, getty or units that need real hardware; journald not reading kmsg.
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
      /lib/systemd/system/sysinit.target.wants/systemd-udev* \
 && echo "ReadKMsg=no" >>/etc/systemd/journald.conf \
 && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \
 && : >/etc/machine-id
COPY files/ /
COPY fleet-runc /usr/local/sbin/fleet-runc
RUN systemctl enable containerd.service kubelet.service \
 && chmod +x /usr/local/bin/entrypoint
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
