"""localkube: a real Kubernetes control plane on one machine, for tests and development.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler from their release
binaries (tools/testbin.sh builds them), process kubelets that run pods as local
processes in network namespaces of their own, and MinIO and Prometheus beside them.
`Cluster` starts and stops it all; `python -m localkube up` runs one until Ctrl-C.
"""

from localkube.api import ApiError, KubeApi
from localkube.cluster import Cluster, default_nodes
from localkube.images import Images
from localkube.kubelet import NodeSpec

__all__ = ["ApiError", "Cluster", "Images", "KubeApi", "NodeSpec", "default_nodes"]
