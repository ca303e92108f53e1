#!/usr/bin/env bash
# `make image-check`: the product image run as the chart runs it, in real containers, against the Redis
# image (AOF on an anonymous volume): read-only root filesystem, user 65532, a 256 MiB memory limit, on
# a Docker network whose subnet this script sets (CHECK_SUBNET), the API published on 127.0.0.1 only. Checks GET /ready, a lease
# acquire and release, and that /queue/memory reads the container's cgroup limit. Exits non-zero on
# any failure; removes what it created.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
IMAGE=$(bash "$KIND_DIR/images.sh" name)
REDIS_IMAGE=$(bash "$KIND_DIR/images.sh" redis-name)
NET=fleet-limiter-check
SUBNET=${CHECK_SUBNET:-172.30.99.0/24}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for i in "$IMAGE" "$REDIS_IMAGE"; do
  docker image inspect "$i" >/dev/null 2>&1 || die "image $i is missing (make image; tools/kind/images.sh redis)"
done
cleanup() { docker rm -f -v fl-check-limiter fl-check-redis >/dev/null 2>&1 || true; docker network rm "$NET" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
docker network create --subnet "$SUBNET" "$NET" >/dev/null
say "check: network $NET ($SUBNET)"
docker run -d --name fl-check-redis --network "$NET" --read-only --user 999:999 \
  -v /data "$REDIS_IMAGE" \
  redis-server --appendonly yes --dir /data --save '' --protected-mode no >/dev/null
docker run -d --name fl-check-limiter --network "$NET" --read-only --user 65532:65532 --memory 256m \
  -v "$REPO_DIR/examples/tpm.yaml:/policy/tpm.yaml:ro" -p "127.0.0.1:$PORT:8080" "$IMAGE" \
  fleet-limiter serve --policy /policy/tpm.yaml --redis redis://fl-check-redis:6379/0 --host 0.0.0.0 --port 8080 >/dev/null
say "check: $IMAGE (read-only, user 65532, 256 MiB) against $REDIS_IMAGE; API on 127.0.0.1:$PORT"
url=http://127.0.0.1:$PORT
for _ in $(seq 60); do curl -fs "$url/ready" >/dev/null && break; sleep 0.5; done
curl -fsS "$url/ready" >/dev/null || { docker logs fl-check-limiter 2>&1 | tail -20 >&2; die "GET /ready did not answer 200"; }
say "check: GET /ready -> 200 $(curl -fsS "$url/ready")"
lease=$(curl -fsS -X POST -H 'content-type: application/json' -d '{"jobType": "A", "waitSeconds": 5}' "$url/api/jobs/acquire")
lease_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["leaseId"])' "$lease")
curl -fsS -X POST -H 'content-type: application/json' -d '{"actual": {"tokens": 8000}}' "$url/api/jobs/$lease_id/release" >/dev/null
say "check: lease $lease_id acquired and released"
memory=$(curl -fsS "$url/queue/memory")
python3 - "$memory" <<'PY' || die "/queue/memory does not follow the container's 256 MiB limit: $memory"
import json, sys
m = json.loads(sys.argv[1])
assert abs(m["total_gb"] - 0.25) < 0.01, m
PY
say "check: GET /queue/memory follows the cgroup limit: $memory"
uid=$(docker exec fl-check-limiter id -u)
ro=$(docker exec fl-check-limiter sh -c 'touch /x 2>&1 || true')
[[ $uid == 65532 && $ro == *"Read-only file system"* ]] || die "expected uid 65532 on a read-only rootfs, got uid=$uid, touch: $ro"
say "check: uid $uid, root filesystem read-only ($ro)"
