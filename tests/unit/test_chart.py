"""The Helm chart, rendered and linted by the real helm binary (no cluster needed)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localkube.binaries import binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubetrain"
ALL_ON = [
    "--set",
    "serviceMonitor.enabled=true,podMonitor.enabled=true,prometheusRule.enabled=true,"
    "dashboards.enabled=true,operator.logLevel=debug,operator.watchNamespaces={team-a,team-b},"
    "operator.defaultCheckpointUri=s3://ckpt/jobs,operator.defaultS3Endpoint=http://minio:9000,"
    "operator.defaultCredentialsSecret=s3-creds",
]
POD_KINDS = {"Deployment": ("spec", "template", "spec"), "Pod": ("spec",)}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    result = helm("template", "kt", str(CHART), "--namespace", "kubetrain-system", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def read_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in docs:
        path = POD_KINDS.get(doc["kind"])
        if path is None:
            continue
        spec: Any = doc
        for key in path:
            spec = spec[key]
        specs.append((f"{doc['kind']}/{doc['metadata']['name']}", spec))
    return specs


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def all_docs() -> list[dict[str, Any]]:
    return render(*ALL_ON)


# --- lint and schema ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ALL_ON], ids=["defaults", "all-features"])
def test_helm_lint_strict(args: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_app_version_is_the_project_version() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "operator.noSuchKey=1"], "noSuchKey"),
        (["--set", "noSuchTopLevel=true"], "noSuchTopLevel"),
        (["--set", "crds.enabled=maybe"], "crds"),
        (["--set", "operator.replicaCount=0"], "replicaCount"),
        (["--set", "operator.logLevel=trace"], "logLevel"),
        (["--set", "operator.healthPort=0"], "healthPort"),
        (["--set", "operator.image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set-string", "operator.reconcileIntervalSeconds=5"], "reconcileIntervalSeconds"),
    ],
)
def test_schema_rejects_bad_values(args: list[str], message: str) -> None:
    result = helm("template", "kt", str(CHART), *args)
    assert result.returncode != 0, f"{args} was accepted"
    assert message in result.stderr, result.stderr


def schema_objects(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node that declares properties (an object with named keys)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found += schema_objects(child, f"{path}.{key}")
    return found


def test_schema_closes_every_object_and_describes_every_value_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    objects = schema_objects(schema)
    assert len(objects) > 10
    for path, node in objects:
        assert node.get("additionalProperties") is False, path
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert "type" in node or "const" in node, path
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} missing from the schema"
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")


def test_every_values_key_has_a_comment() -> None:
    """Each key the schema names is documented by the comment line above it; keys inside
    free-form maps (resources, securityContext, ...) share their parent's comment."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    checked = 0
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        node: dict[str, Any] | None = schema
        for _, key in stack:
            node = node.get("properties", {}).get(key) if node else None
        key = stripped.split(":", 1)[0]
        stack.append((indent, key))
        if node is None or key not in node.get("properties", {}):
            continue  # inside a free-form map
        checked += 1
        assert lines[number - 1].strip().startswith("#"), (
            f"values.yaml:{number + 1} {key!r} has no comment"
        )
    assert checked > 40


# --- what gets rendered ------------------------------------------------------------------


def test_defaults_render_the_operator_and_no_monitoring_crds(
    default_docs: list[dict[str, Any]],
) -> None:
    kinds = {d["kind"] for d in default_docs}
    assert {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "Pod",
    } <= kinds
    # Prometheus Operator kinds only on request: the chart installs on clusters without it.
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_all_features_render_monitoring_and_dashboards(all_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in all_docs}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    dashboards = [
        d for d in by_kind(all_docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert len(dashboards) == len(list((CHART / "dashboards").glob("*.json")))
    for config_map in dashboards:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        for text in config_map["data"].values():
            assert json.loads(text)["uid"].startswith("kubetrain-")
    service_monitor = by_kind(all_docs, "ServiceMonitor")[0]["spec"]
    # Per-job operator series name the job's namespace, not the operator pod's.
    assert service_monitor["endpoints"][0]["honorLabels"] is True
    monitor = by_kind(all_docs, "PodMonitor")[0]["spec"]
    assert monitor["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"


def test_every_resource_has_the_standard_labels(all_docs: list[dict[str, Any]]) -> None:
    for doc in all_docs:
        labels = doc["metadata"]["labels"]
        for key in ("name", "instance", "version", "managed-by", "component", "part-of"):
            assert f"app.kubernetes.io/{key}" in labels, (doc["kind"], key)
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_is_the_generated_crd(default_docs: list[dict[str, Any]]) -> None:
    generated = ROOT / "crds" / "trainingjobs.kubetrain.io.yaml"
    crd = by_kind(default_docs, "CustomResourceDefinition")[0]
    source = yaml.safe_load(generated.read_text())
    # Compared as data: int64 bounds must survive the template untouched.
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_keep_and_enabled_switches() -> None:
    dropped = render("--set", "crds.keep=false")
    crd = by_kind(dropped, "CustomResourceDefinition")[0]
    assert "annotations" not in crd["metadata"]
    assert not by_kind(render("--set", "crds.enabled=false"), "CustomResourceDefinition")


def test_rbac_rules_are_the_operator_rules(default_docs: list[dict[str, Any]]) -> None:
    source = ROOT / "operator" / "deploy" / "rbac.yaml"
    rules = {d["metadata"]["name"]: d["rules"] for d in read_yaml_docs(source) if "rules" in d}
    roles = {d["metadata"]["name"]: d for d in by_kind(default_docs, "ClusterRole")}
    assert roles["kt-kubetrain"]["rules"] == rules["kubetrain-operator"]
    assert roles["kt-kubetrain-cluster"]["rules"] == rules["kubetrain-operator-cluster"]
    assert by_kind(default_docs, "Role")[0]["rules"] == rules["kubetrain-operator-leader"]
    account = by_kind(default_docs, "ServiceAccount")[0]
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": "kubetrain-system",
    }
    bindings = by_kind(default_docs, "ClusterRoleBinding")
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles)  # cluster-wide
    assert all(b["subjects"] == [subject] for b in bindings)
    assert not by_kind(render("--set", "rbac.create=false"), "ClusterRole")


def test_watched_namespaces_bind_the_namespaced_rules_there_only(
    all_docs: list[dict[str, Any]],
) -> None:
    cluster_wide = [b["roleRef"]["name"] for b in by_kind(all_docs, "ClusterRoleBinding")]
    assert cluster_wide == ["kt-kubetrain-cluster"]  # nodes and the CRD only
    per_namespace = {
        b["metadata"]["namespace"]: b["roleRef"]
        for b in by_kind(all_docs, "RoleBinding")
        if b["roleRef"]["kind"] == "ClusterRole"
    }
    assert set(per_namespace) == {"team-a", "team-b"}
    assert all(ref["name"] == "kt-kubetrain" for ref in per_namespace.values())


def test_the_operator_reads_only_the_notification_secrets_it_is_allowed(
    default_docs: list[dict[str, Any]],
) -> None:
    """No `get` on every Secret: one name by default, the admin's extra names on top."""

    def secret_reads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        role = next(
            d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"] == "kt-kubetrain"
        )
        return [r for r in role["rules"] if "secrets" in r["resources"] and "get" in r["verbs"]]

    assert secret_reads(default_docs) == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["kubetrain-notifications"],
            "verbs": ["get"],
        }
    ]
    widened = render(
        "--set",
        "notifications.extraSecretNames={team-hooks,ml-alerts},notifications.allowPrivateWebhooks=true",
    )
    names = [r["resourceNames"] for r in secret_reads(widened)]
    assert names == [["kubetrain-notifications"], ["team-hooks", "ml-alerts"]]
    env = by_kind(widened, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBETRAIN_NOTIFY_ALLOW_PRIVATE", "value": "true"} in env
    bad = helm("template", "kt", str(CHART), "--set", "notifications.extraSecretNames={Not_A_Name}")
    assert bad.returncode != 0 and "extraSecretNames" in bad.stderr


def test_the_admission_policy_is_the_generated_one_with_the_admins_extras() -> None:
    from kubetrain_core import admission

    docs = render(
        "--set", "admission.extraPodFields={serviceAccountName},admission.allowSecretEnv=true"
    )
    policy = by_kind(docs, "ValidatingAdmissionPolicy")[0]
    assert policy["spec"] == admission.policy_spec()
    binding = by_kind(docs, "ValidatingAdmissionPolicyBinding")[0]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    params = next(
        d
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["name"] == binding["spec"]["paramRef"]["name"]
    )
    defaults = admission.params_data()
    assert params["data"]["podFields"] == defaults["podFields"] + ",serviceAccountName"
    assert params["data"]["volumeTypes"] == defaults["volumeTypes"]
    assert params["data"]["allowSecretEnv"] == "true"
    env = {
        e["name"]: e.get("value")
        for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETRAIN_EXTRA_POD_FIELDS"] == "serviceAccountName"  # the operator agrees
    assert env["KUBETRAIN_ALLOW_SECRET_ENV"] == "true"
    assert not by_kind(render("--set", "admission.enabled=false"), "ValidatingAdmissionPolicy")


def test_network_policies_and_unspoofable_trainer_series(all_docs: list[dict[str, Any]]) -> None:
    policy = by_kind(all_docs, "NetworkPolicy")[0]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ports == [9090, 8080]
    env = {
        e["name"]: e.get("value")
        for e in by_kind(all_docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["KUBETRAIN_NETWORK_POLICY"] == "true"  # and one per job, from the operator
    assert json.loads(env["KUBETRAIN_METRICS_PEERS"])[0]["podSelector"]
    endpoint = by_kind(all_docs, "PodMonitor")[0]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["honorLabels"] is False
    assert endpoint["relabelings"][0]["targetLabel"] == "trainingjob"
    assert not by_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_several_replicas_elect_a_leader() -> None:
    deployment = by_kind(render("--set", "operator.replicaCount=2"), "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_deployment_runs_one_operator_with_probes(all_docs: list[dict[str, Any]]) -> None:
    deployment = by_kind(all_docs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT (kubetrain) runs
    assert container["args"][0] == "operator"
    assert "--namespace=team-a" in container["args"]
    assert "--verbose" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-health"}
    assert f"--health-port={ports['http-health']}" in container["args"]
    assert f"--metrics-port={ports['http-metrics']}" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETRAIN_DEFAULT_IMAGE"] == "ghcr.io/kubetrain/kubetrain-trainer:0.1.0"
    assert env["KUBETRAIN_DEFAULT_CHECKPOINT_URI"] == "s3://ckpt/jobs"
    assert env["KUBETRAIN_DEFAULT_CREDENTIALS_SECRET"] == "s3-creds"


def test_operator_ports_match_the_cli_defaults(default_docs: list[dict[str, Any]]) -> None:
    cli = (ROOT / "cli" / "kubetrain_cli" / "cli.py").read_text()
    defaults = {
        flag: int(m.group(1))
        for flag in ("health", "metrics")
        if (m := re.search(rf'"--{flag}-port", type=int, default=(\d+)', cli))
    }
    container = by_kind(default_docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-health": defaults["health"], "http-metrics": defaults["metrics"]}


def test_settings_env_names_are_the_ones_the_operator_reads(
    all_docs: list[dict[str, Any]],
) -> None:
    source = (ROOT / "operator" / "kubetrain_operator" / "settings.py").read_text()
    container = by_kind(all_docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    read_by_kopf = {"POD_ID"}  # kopf's own identity (peering.detect_own_id)
    for item in container["env"]:
        if item["name"] not in read_by_kopf:
            assert f'"{item["name"]}"' in source, f"{item['name']} is not read by settings.py"


def test_every_pod_is_restricted(all_docs: list[dict[str, Any]]) -> None:
    specs = pod_specs(all_docs)
    assert {name.split("/")[0] for name, _ in specs} == {"Deployment", "Pod"}
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "limits" in container["resources"], name


def test_helm_test_pod_checks_health_and_the_crd(default_docs: list[dict[str, Any]]) -> None:
    pod = by_kind(default_docs, "Pod")[0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    service = by_kind(default_docs, "Service")[0]
    script = container["command"][-1]
    assert f"http://{service['metadata']['name']}.kubetrain-system.svc:8080" in script
    assert "/healthz" in script and "/readyz" in script
    assert '"kubetrain.io", "v1alpha1", "trainingjobs"' in script
    compile(script, "helm-test", "exec")  # the inline Python at least parses
