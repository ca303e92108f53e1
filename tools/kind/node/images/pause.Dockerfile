# fleet-limiter.local/pause: the static pause binary built from pause.c, nothing else.
FROM scratch
COPY bin/pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
