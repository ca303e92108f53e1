# Real containers (tools/kind, docs/e2e.md), included by the top Makefile:
#   -include tools/kind/kind.mk

.PHONY: docker-up docker-down image image-name redis-image image-check kind-up kind-down

## docker-up: make a Docker engine answer (installs docker.io, starts dockerd, the runtime wrapper where needed)
docker-up:
	@bash tools/kind/docker.sh

## docker-down: stop the dockerd that docker-up started (an engine started otherwise is left alone)
docker-down:
	@bash tools/kind/docker.sh stop

## image: build the product image from the Dockerfile (BASE=auto|local|IMAGE; `make -s image-name` prints it)
image:
	@bash tools/kind/images.sh image

image-name:
	@bash tools/kind/images.sh name

## redis-image: build the Redis image the chart runs on kind (Debian's redis-server)
redis-image:
	@bash tools/kind/images.sh redis

## image-check: run the image read-only as user 65532 against the Redis image and check /ready
image-check: image redis-image
	@bash tools/kind/image-check.sh

## kind-up: a kind cluster (1 control plane, 2 workers) built offline, images loaded; KUBECONFIG=.kind/kubeconfig
kind-up:
	@bash tools/kind/kind-up.sh

## kind-down: delete the kind cluster and its Docker network (images and caches stay)
kind-down:
	@bash tools/kind/kind-down.sh
