# syntax=docker/dockerfile:1
# kubetrain images, one Dockerfile, two targets:
#   docker build --target operator -t kubetrain-operator:0.1.0 .
#   docker build --target trainer  -t kubetrain-trainer:0.1.0 .                 (CUDA base)
#   docker build --target trainer  -t kubetrain-trainer:0.1.0-cpu \
#     --build-arg BASE_IMAGE=python:3.11.14-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .       (CPU base)
# Every base is pinned by tag; versions of Python packages come from constraints.txt.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# The trainer's base: CUDA by default (torch's wheels bring their own CUDA libraries; the
# base adds the driver-facing environment the NVIDIA container toolkit expects).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# --- wheel: build the kubetrain wheel once, for both images ------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY core/ core/
COPY operator/ operator/
COPY trainer_image/ trainer_image/
COPY cli/ cli/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && cp constraints.txt /wheels/

# --- operator: kopf and the Kubernetes client, no torch ----------------------------------
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/wheels/constraints.txt "$(ls /tmp/wheels/kubetrain-*.whl)[operator]" \
    && rm -rf /tmp/wheels \
    && groupadd --gid 65532 kubetrain \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kubetrain
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090
# The Helm chart passes `operator --health-port=... --metrics-port=...` as args.
ENTRYPOINT ["kubetrain"]
CMD ["operator"]

# --- trainer: torch, the modular trainer, and examples/ for relative data paths ----------
FROM ${BASE_IMAGE} AS trainer
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/kubetrain
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA bases carry no Python: take the distribution's (its version follows the pinned base).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV"
COPY --from=wheel /wheels /tmp/wheels
# torch first, from the index that matches the base (CUDA wheels on PyPI, CPU wheels from
# download.pytorch.org/whl/cpu); `python` on PATH is the venv's: the operator's pods run
# `python -m torch.distributed.run ... -m kubetrain_trainer train`.
RUN pip install --no-cache-dir -c /tmp/wheels/constraints.txt --index-url "$TORCH_INDEX_URL" \
        --extra-index-url https://pypi.org/simple torch \
    && pip install --no-cache-dir -c /tmp/wheels/constraints.txt "$(ls /tmp/wheels/kubetrain-*.whl)[trainer]" \
    && rm -rf /tmp/wheels \
    && (getent group 65532 || groupadd --gid 65532 kubetrain) \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/kubetrain --shell /usr/sbin/nologin kubetrain
WORKDIR /opt/kubetrain
COPY examples/ examples/
USER 65532:65532
EXPOSE 9090 29400
ENTRYPOINT ["kubetrain"]
CMD ["--help"]
