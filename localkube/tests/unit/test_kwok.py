"""The kwok wiring: the stages it is given and the nodes it manages (no process runs)."""

from __future__ import annotations

import json
from pathlib import Path

from localkube import kwok


def _by_name(docs: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(d["metadata"]["name"]): d for d in docs}  # type: ignore[index]


def test_pods_run_then_succeed_with_exit_code_zero_after_the_delay() -> None:
    stages = _by_name(kwok.stages(complete_after_seconds=2.5))
    assert set(stages) == {"node-initialize", "pod-ready", "pod-delete", "pod-complete"}
    complete = stages["pod-complete"]["spec"]
    assert complete["delay"] == {"durationMilliseconds": 2500}  # type: ignore[index]
    template = complete["next"]["statusTemplate"]  # type: ignore[index]
    # What the operator reads as success: phase Succeeded, the container terminated with 0.
    assert "phase: Succeeded" in template and "exitCode: 0" in template
    assert "phase: Running" in stages["pod-ready"]["spec"]["next"]["statusTemplate"]  # type: ignore[index]


def test_without_a_delay_pods_run_forever() -> None:
    assert "pod-complete" not in _by_name(kwok.stages(complete_after_seconds=None))


def test_the_config_file_is_one_yaml_document_per_stage() -> None:
    docs = kwok.config_text(1.0).split("\n---\n")
    assert [json.loads(d)["kind"] for d in docs] == ["Stage"] * 4


def test_kwok_manages_only_annotated_nodes_and_hands_out_loopback_pod_ips(tmp_path: Path) -> None:
    runner = kwok.Kwok(tmp_path / "kubeconfig", tmp_path)
    argv = " ".join(runner.argv()[1:])
    assert f"--manage-nodes-with-annotation-selector={kwok.ANNOTATION}=fake" in argv
    assert "--cidr=127." in argv  # a probe of a fake pod is refused at once
    node = kwok.fake_node("n1")
    assert node["metadata"]["annotations"][kwok.ANNOTATION] == "fake"
    assert node["status"]["capacity"]["pods"] == "1000"
