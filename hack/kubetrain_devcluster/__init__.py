"""kubetrain on localkube: what the local cluster needs to know of this project.

The repository root (the images' WORKDIR), the packages' source roots (the pods'
import path), the images' entry points (from the Dockerfile), installing the CRD,
RBAC and admission policy, and running the operator from source under its own
identity. Tests, benchmarks and `make dev-cluster` use it; localkube itself knows
nothing of kubetrain.
"""
