# kubetrain developer entry points. `make demo` and `make test` work from nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE ?= $(HOME)/.cache/kubetrain
# The virtualenv lives outside the clone, keyed by the dependency pins, so that
# torch (~5 GB with its CUDA libraries) is downloaded once per dependency set.
DEPS_KEY := $(shell python3 hack/deps_key.py)
VENV ?= $(CACHE)/venv-$(DEPS_KEY)
PY := $(VENV)/bin/python
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
export PYTHONPATH := $(CURDIR)/core:$(CURDIR)/operator:$(CURDIR)/trainer_image:$(CURDIR)/cli:$(CURDIR)/localkube:$(CURDIR)/hack
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help venv lint unit pytest test test-gpu chaos demo demo-chat demo-lora testbin dev-cluster generate chart images kind bench benchmark clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: | constraints.txt
	@echo "==> creating $(VENV) (first time only: downloads torch)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

EDITABLE := $(CURDIR) $(shell sha256sum pyproject.toml | cut -c1-12)

venv: $(VENV)/.installed ## create the cached virtualenv with every dependency
	@# the editable install points at this clone; redone only when the clone or
	@# pyproject.toml changed (concurrent reinstalls race on the console scripts)
	@test "$$(cat $(VENV)/.editable 2>/dev/null)" = "$(EDITABLE)" || { \
	  $(VENV)/bin/pip install -q --no-deps -e . >/dev/null && echo "$(EDITABLE)" > $(VENV)/.editable; }

lint: venv ## ruff, mypy and the layers' import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv ## fast tests of pure logic and single components
	$(PY) -m pytest tests/unit -q

pytest: venv ## run pytest with ARGS, e.g. make pytest ARGS='-m e2e -k harness'
	$(PY) -m pytest $(ARGS)

testbin: ## build the test control plane (kube-*, etcd, helm, minio, prometheus) into the cache
	tools/testbin.sh

test: ## every test: lint, unit, integration (MinIO, torchrun), e2e (local cluster)
	@# the virtualenv and the Go builds side by side: on a fresh machine they take ~9 and ~18 min
	$(MAKE) --no-print-directory -j2 lint testbin
	$(PY) -m pytest -q --durations=40

chaos: lint testbin ## the fault suite on the local cluster; rows in runs/chaos.json
	$(PY) -m pytest -m chaos -v tests/e2e/test_chaos.py

demo: venv ## train examples/trainingjob.yaml locally (no cluster needed)
	$(VENV)/bin/kubetrain run examples/trainingjob.yaml

examples/models/chat-base/config.json: examples/make_base_model.py examples/data/tiny_corpus.txt
	$(PY) examples/make_base_model.py examples/models/chat-base

demo-chat: venv examples/models/chat-base/config.json ## fine-tune a small Hugging Face model on the shipped chat data
	$(VENV)/bin/kubetrain run examples/finetune-chat.yaml

# The LoRA example's base: wider and deeper, and pretrained for about a minute on shipped
# text (stories and a cookbook of other dishes than the fine-tuning data's).
examples/models/recipe-base/config.json: examples/make_base_model.py examples/data/tiny_corpus.txt examples/data/make_recipes.py
	$(PY) examples/make_base_model.py examples/models/recipe-base --preset recipe

demo-lora: venv examples/models/recipe-base/config.json ## LoRA fine-tuning on the shipped recipes, scored by BLEU and ROUGE
	$(VENV)/bin/kubetrain run examples/finetune-lora.yaml

test-gpu: venv ## the gpu-marked tests (QLoRA, CUDA paths); run on a machine with a CUDA GPU
	$(PY) -m pytest -m gpu -v

dev-cluster: venv testbin ## a local Kubernetes cluster with the CRD and operator; Ctrl-C stops it
	$(PY) -m kubetrain_devcluster up

generate: venv ## regenerate every generated file (CRD, chart copies, docs/api.md, dashboards, values schema)
	$(PY) hack/generate.py

chart: generate testbin ## lint the chart with the pinned helm
	$$($(PY) -m localkube.binaries locate helm) lint --strict helm/kubetrain

images: ## build both images (needs a Docker engine; not available in CI here)
	docker build --target operator -t ghcr.io/kubetrain/kubetrain-operator:$(VERSION) .
	docker build --target trainer -t ghcr.io/kubetrain/kubetrain-trainer:$(VERSION) .

kind: ## kind cluster with both images, the chart and the example job (needs Docker, kind)
	hack/kind/up.sh

# Every benchmark that runs without the local cluster, at its quick size (does it all
# run?); make echoes each command before it runs. Figures: make benchmark NAME=... ARGS=...
# (docs/benchmarks.md). checkpoint_stall and s3_throughput start a MinIO (tools/testbin.sh).
bench: venv ## quick mode of every benchmark without a cluster (full runs: make benchmark NAME=...)
	tools/testbin.sh minio
	$(PY) benchmarks/peers.py --quick
	$(PY) benchmarks/peers.py --quick --model hf
	$(PY) benchmarks/ddp_scaling.py --quick
	$(PY) benchmarks/checkpoint_stall.py --steps 10 --interval 5 --rounds 1
	$(PY) benchmarks/data_memory.py --sizes 2 4 --batches 20
	$(PY) benchmarks/s3_throughput.py --quick
	$(PY) benchmarks/activation_cache.py --quick

benchmark: venv testbin ## one benchmark with the sources on PYTHONPATH: make benchmark NAME=recovery ARGS=...
	$(PY) benchmarks/$(NAME).py $(ARGS)

clean: ## remove local run outputs (not the caches)
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
