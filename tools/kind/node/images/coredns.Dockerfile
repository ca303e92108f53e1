# fleet-limiter.local/coredns: CoreDNS built from its Go module; kubeadm's Deployment passes only args.
FROM scratch
COPY bin/coredns /coredns
ENTRYPOINT ["/coredns"]
