"""The process kubelet: a Node that runs each bound pod's containers as local processes,
in the pod's own network and mount namespaces (node.py is the Node, pod.py a pod)."""

from localkube.kubelet.node import NodeSpec, ProcessKubelet

__all__ = ["NodeSpec", "ProcessKubelet"]
