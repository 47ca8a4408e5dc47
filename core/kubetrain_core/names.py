"""The API's names: group, version, kind, and the prefix of kubetrain's own labels,
annotations and finalizer (reserved for the operator, pod_policy.py)."""

GROUP = "kubetrain.io"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
PREFIX = GROUP
