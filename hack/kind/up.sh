#!/usr/bin/env bash
# Bring kubetrain up on a local kind cluster: build both images, load them into the nodes,
# install the Helm chart, run examples/trainingjob.yaml.
#
#   hack/kind/up.sh            # create or reuse the cluster "kubetrain", install, run the example
#   hack/kind/up.sh --down     # delete the cluster
#
# Needs docker, kind, helm and kubectl on PATH. The trainer image is built on the CPU base
# (kind nodes have no GPUs) unless TRAINER_BASE_IMAGE is set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-kubetrain}"
NAMESPACE="${NAMESPACE:-kubetrain-system}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "${ROOT}/pyproject.toml" | head -n1)"
TAG="${TAG:-${VERSION}-dev}"
OPERATOR_IMAGE="kubetrain/kubetrain-operator"
TRAINER_IMAGE="kubetrain/kubetrain-trainer"
TRAINER_BASE_IMAGE="${TRAINER_BASE_IMAGE:-python:3.11.14-slim-bookworm}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "up.sh: $1 is not on PATH" >&2; exit 1; }
}

if [[ "${1:-}" == "--down" ]]; then
  need kind
  kind delete cluster --name "${CLUSTER}"
  exit 0
fi

for tool in docker kind helm kubectl; do need "${tool}"; done
docker info >/dev/null 2>&1 || { echo "up.sh: no Docker engine reachable" >&2; exit 1; }

if ! kind get clusters | grep -qx "${CLUSTER}"; then
  kind create cluster --name "${CLUSTER}" --config "${ROOT}/hack/kind/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-${CLUSTER}" >/dev/null

echo "==> building ${OPERATOR_IMAGE}:${TAG} and ${TRAINER_IMAGE}:${TAG}"
docker build --target operator -t "${OPERATOR_IMAGE}:${TAG}" "${ROOT}"
docker build --target trainer -t "${TRAINER_IMAGE}:${TAG}" \
  --build-arg BASE_IMAGE="${TRAINER_BASE_IMAGE}" \
  --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL}" "${ROOT}"

echo "==> loading images into kind"
kind load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}:${TAG}" "${TRAINER_IMAGE}:${TAG}"

echo "==> installing the chart"
helm upgrade --install kubetrain "${ROOT}/helm/kubetrain" \
  --namespace "${NAMESPACE}" --create-namespace \
  --set operator.image.repository="${OPERATOR_IMAGE}" \
  --set operator.image.tag="${TAG}" \
  --set operator.image.pullPolicy=Never \
  --set trainer.image.repository="${TRAINER_IMAGE}" \
  --set trainer.image.tag="${TAG}" \
  --set dashboards.enabled=true \
  --wait --timeout 5m
helm test kubetrain --namespace "${NAMESPACE}" --logs

echo "==> running examples/trainingjob.yaml"
kubectl apply -f "${ROOT}/examples/trainingjob.yaml"
kubectl get trainingjobs
echo "watch it: kubectl get tj -w    (delete the cluster: hack/kind/up.sh --down)"
