"""The Helm chart, rendered offline with the pinned helm: lint, RBAC, the operator's pod, schema.

No cluster: ``helm lint`` and ``helm template`` only. ``tests/integration/test_chart_install.py``
installs the chart into a real API server.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import trtllm_operator
from trtllm_operator.localcluster.binaries import KUBERNETES_VERSION, BinaryBuilder

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trtllm-operator"
RELEASE = "ops"
NAMESPACE = "trtllm-system"
FULLNAME = f"{RELEASE}-trtllm-operator"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

Doc = dict[str, Any]
Rule = tuple[str, str, str]  # (apiGroup, resource, verb)


def expand(rules: list[tuple[list[str], list[str], list[str]]]) -> set[Rule]:
    return {(g, r, v) for groups, resources, verbs in rules
            for g in groups for r in resources for v in verbs}


# The operator's permissions, verb by verb: the contract the chart must grant, no more.
# (tests/e2e/test_rbac.py proves each rule necessary against the real API server.)
NAMESPACED_RULES = expand([
    (["trtllm.dev"], ["llmengines"], ["list", "watch", "patch"]),
    (["trtllm.dev"], ["llmengines/status", "llmdeployments/status"], ["patch"]),
    (["trtllm.dev"], ["llmdeployments"], ["list", "watch"]),
    (["batch"], ["jobs"], ["list", "watch", "create", "delete"]),
    ([""], ["pods", "persistentvolumeclaims"], ["list", "watch"]),
    ([""], ["pods/log"], ["get"]),
    ([""], ["configmaps"], ["list", "watch", "create", "patch"]),
    (["apps"], ["deployments"], ["list", "watch", "create", "patch", "delete"]),
    ([""], ["services"], ["list", "watch", "create", "patch"]),
    ([""], ["events"], ["create"]),
    (["inference.networking.k8s.io"], ["inferencepools"], ["list", "create", "patch", "delete"]),
    (["autoscaling"], ["horizontalpodautoscalers"], ["list", "watch", "create", "patch",
                                                     "delete"]),
    (["keda.sh"], ["scaledobjects"], ["list", "create", "patch", "delete"]),
    (["monitoring.coreos.com"], ["podmonitors"], ["list", "create", "patch", "delete"]),
])
CLUSTER_RULES = expand([
    ([""], ["nodes"], ["list", "watch"]),
])


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return BinaryBuilder().ensure(["helm"])["helm"]


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's cache, config and data folders kept out of the user's home."""
    home = tmp_path_factory.mktemp("helm")
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}


def run_helm(helm_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_bin), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def render(helm_bin: Path, helm_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``render(values={...}, api_versions=[...])`` -> the rendered objects."""
    tmp = tmp_path_factory.mktemp("values")
    counter = iter(range(1_000_000))

    def _render(values: Doc | None = None, api_versions: tuple[str, ...] = (),
                *extra: str) -> list[Doc]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--kube-version", KUBERNETES_VERSION, *extra]
        if values is not None:
            # A values file (not --set): YAML numbers reach the templates as float64, as they
            # do for users.
            path = tmp / f"values-{next(counter)}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        for api in api_versions:
            args += ["--api-versions", api]
        proc = run_helm(helm_bin, helm_env, *args)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return _render


def one(docs: list[Doc], kind: str, name: str | None = None,
        namespace: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def rules_of(role: Doc) -> set[Rule]:
    """A Role's or ClusterRole's rules as (group, resource, verb) triples."""
    triples: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, \
            f"unexpected rule fields (resourceNames, nonResourceURLs?): {rule}"
        triples |= expand([(rule["apiGroups"], rule["resources"], rule["verbs"])])
    assert "*" not in {part for triple in triples for part in triple}, "no wildcards"
    return triples


def container(docs: list[Doc]) -> Doc:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    found: Doc = pod["containers"][0]
    return found


def env_of(docs: list[Doc]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"]}


def chart_meta() -> Doc:
    meta: Doc = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("values", [
    pytest.param([], id="defaults"),
    pytest.param(["--set", "watchNamespaces={team-a,team-b}"], id="namespaced"),
    pytest.param(["--set", "metrics.enabled=false"], id="no-metrics"),
])
def test_helm_lint_strict_passes(helm_bin: Path, helm_env: dict[str, str],
                                 values: list[str]) -> None:
    proc = run_helm(helm_bin, helm_env, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_chart_metadata() -> None:
    meta = chart_meta()
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "trtllm-operator"
    assert meta["version"] == "0.1.0"
    assert meta["kubeVersion"] == ">=1.28.0-0"
    # The default image tag is the appVersion: it must be the operator release it deploys.
    assert meta["appVersion"] == trtllm_operator.__version__


# --------------------------------------------------------------------------- default render


def test_default_render_has_the_operator_and_nothing_more(render: Any) -> None:
    docs = render()
    assert kinds(docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                           "ServiceAccount"]


def test_every_object_is_labelled_and_namespaced_in_the_release_namespace(render: Any) -> None:
    docs = render({"watchNamespaces": ["team-a"]})
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        meta = doc["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "trtllm-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == chart_meta()["appVersion"]
        assert labels["helm.sh/chart"] == "trtllm-operator-0.1.0"
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in meta
            # Cluster-scoped names carry the release name: parallel releases do not collide.
            assert RELEASE in meta["name"]
        elif doc["kind"] in {"Role", "RoleBinding"}:
            assert meta["namespace"] == "team-a"
        else:
            # Explicit, so `helm template | kubectl apply` (GitOps) lands in the right place.
            assert meta["namespace"] == NAMESPACE


def test_deployment_runs_exactly_one_operator_replaced_with_recreate(render: Any) -> None:
    deployment = one(render(), "Deployment", FULLNAME)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "trtllm-operator",
                        "app.kubernetes.io/instance": RELEASE}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    # The operator's own pod must not look like one of its children.
    assert pod_labels.get("app.kubernetes.io/managed-by") != "trtllm-operator"


def test_pod_security_is_restricted(render: Any) -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc.get("privileged", False) is False


def test_tmp_is_writable_on_a_read_only_root(render: Any) -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert not any(m.get("readOnly") for m in container(docs)["volumeMounts"])


def test_probes_hit_healthz_on_the_health_port(render: Any) -> None:
    docs = render({"health": {"port": 9999}})
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 9999}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert env_of(docs)["TRTLLM_OPERATOR_HEALTH_PORT"] == "9999"


def test_settings_reach_the_operator_as_environment(render: Any) -> None:
    defaults = env_of(render())
    assert defaults == {
        "TRTLLM_OPERATOR_NAMESPACES": "[]",
        "TRTLLM_OPERATOR_WORKERS": "32",
        "TRTLLM_OPERATOR_BUILD_DEADLINE_SECONDS": "21600",
        "TRTLLM_OPERATOR_RETRY_QPS": "10",
        "TRTLLM_OPERATOR_RETRY_BURST": "100",
        "TRTLLM_OPERATOR_API_WRITE_QPS": "200",
        "TRTLLM_OPERATOR_API_WRITE_BURST": "400",
        "TRTLLM_OPERATOR_RECONCILE_ERROR_AFTER": "3",
        "TRTLLM_OPERATOR_STATUS_DETAIL_SECONDS": "15",
        "TRTLLM_OPERATOR_METRICS_PORT": "8080",
        "TRTLLM_OPERATOR_HEALTH_PORT": "8081",
        "TRTLLM_OPERATOR_LOG_FORMAT": "json",
        "TRTLLM_OPERATOR_LOG_LEVEL": "INFO",
        "TRTLLM_OPERATOR_POD_MONITORS": "true",
    }
    # No kubeconfig in a pod: the operator falls back to its ServiceAccount.
    assert "TRTLLM_OPERATOR_KUBECONFIG" not in defaults

    # Large numbers from a values file are float64 in templates; they must not render as 1e+06.
    changed = env_of(render({"workers": 16, "buildDeadlineSeconds": 1_000_000,
                             "rateLimits": {"retryQps": 2.5, "retryBurst": 1000,
                                            "apiWriteQps": 150, "apiWriteBurst": 300},
                             "reconcileErrorAfter": 5, "statusDetailSeconds": 0.5,
                             "logFormat": "text", "logLevel": "DEBUG",
                             "watchNamespaces": ["team-a", "team-b"],
                             "extraEnv": [{"name": "TRTLLM_OPERATOR_BIND_ADDRESS",
                                           "value": "::"}]}))
    assert json.loads(changed["TRTLLM_OPERATOR_NAMESPACES"]) == ["team-a", "team-b"]
    assert changed["TRTLLM_OPERATOR_WORKERS"] == "16"
    assert changed["TRTLLM_OPERATOR_BUILD_DEADLINE_SECONDS"] == "1000000"
    assert changed["TRTLLM_OPERATOR_LOG_FORMAT"] == "text"
    assert changed["TRTLLM_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert (changed["TRTLLM_OPERATOR_RETRY_QPS"], changed["TRTLLM_OPERATOR_RETRY_BURST"],
            changed["TRTLLM_OPERATOR_API_WRITE_QPS"],
            changed["TRTLLM_OPERATOR_API_WRITE_BURST"]) == ("2.5", "1000", "150", "300")
    assert changed["TRTLLM_OPERATOR_RECONCILE_ERROR_AFTER"] == "5"
    assert changed["TRTLLM_OPERATOR_STATUS_DETAIL_SECONDS"] == "0.5"
    # What the chart renders, the operator reads back as the same settings.
    from trtllm_operator.settings import OperatorSettings
    read = OperatorSettings(_env_file=None, **{  # type: ignore[call-arg]
        k.removeprefix("TRTLLM_OPERATOR_").lower(): v for k, v in changed.items()
        if k.startswith("TRTLLM_OPERATOR_") and k != "TRTLLM_OPERATOR_NAMESPACES"})
    assert (read.retry_qps, read.api_write_burst, read.reconcile_error_after,
            read.status_detail_seconds) == (2.5, 300, 5, 0.5)
    assert changed["TRTLLM_OPERATOR_BIND_ADDRESS"] == "::"


def test_settings_the_chart_sets_are_ones_the_operator_reads() -> None:
    from trtllm_operator.settings import OperatorSettings

    prefix = OperatorSettings.model_config["env_prefix"]
    known = {prefix + name.upper() for name in OperatorSettings.model_fields}
    template = (CHART / "templates" / "deployment.yaml").read_text()
    emitted = {word for word in template.replace('"', " ").split()
               if word.startswith("TRTLLM_OPERATOR_")}
    assert emitted, "the Deployment sets no TRTLLM_OPERATOR_* variable?"
    assert emitted <= known, f"settings the operator does not have: {emitted - known}"


def test_image_defaults_to_the_app_version_and_a_digest_wins(render: Any) -> None:
    appversion = chart_meta()["appVersion"]
    assert container(render())["image"] == f"ghcr.io/trtllm-operator/trtllm-operator:{appversion}"
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"repository": "registry.example/op", "tag": "1.2.3",
                               "digest": digest, "pullPolicy": "Always"}})
    assert container(pinned)["image"] == f"registry.example/op@{digest}"
    assert container(pinned)["imagePullPolicy"] == "Always"


def test_resources_and_placement_pass_through(render: Any) -> None:
    docs = render({"nodeSelector": {"kubernetes.io/os": "linux"},
                   "tolerations": [{"key": "dedicated", "operator": "Equal",
                                    "value": "ops", "effect": "NoSchedule"}],
                   "imagePullSecrets": [{"name": "regcred"}],
                   "priorityClassName": "system-cluster-critical"})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    resources = container(render())["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


# --------------------------------------------------------------------------- RBAC


def test_cluster_wide_clusterrole_grants_exactly_the_operators_rules(render: Any) -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    role = one(docs, "ClusterRole", FULLNAME)
    assert rules_of(role) == NAMESPACED_RULES | CLUSTER_RULES
    binding = one(docs, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": FULLNAME}
    account = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_namespaced_mode_grants_roles_per_namespace_and_only_cluster_facts_cluster_wide(
        render: Any) -> None:
    watched = ["team-a", "team-b"]
    docs = render({"watchNamespaces": watched})
    account = one(docs, "ServiceAccount")["metadata"]["name"]

    cluster_role = one(docs, "ClusterRole", FULLNAME)
    assert rules_of(cluster_role) == CLUSTER_RULES
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == FULLNAME

    roles = [d for d in docs if d["kind"] == "Role"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == watched
    assert sorted(b["metadata"]["namespace"] for b in bindings) == watched
    for ns in watched:
        role = one(docs, "Role", namespace=ns)
        assert rules_of(role) == NAMESPACED_RULES
        binding = one(docs, "RoleBinding", namespace=ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "Role", "name": role["metadata"]["name"]}
        # The account lives in the release namespace, not in the watched one.
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": NAMESPACE}]


def test_one_definition_of_the_rules_serves_both_modes(render: Any) -> None:
    cluster_wide = one(render(), "ClusterRole")["rules"]
    namespaced = render({"watchNamespaces": ["team-a"]})
    role_rules = one(namespaced, "Role")["rules"]
    cluster_facts = one(namespaced, "ClusterRole")["rules"]
    # Same rule objects, in the same order: the ClusterRole is the cluster facts + the Role.
    assert cluster_wide == cluster_facts + role_rules


def test_rbac_and_service_account_can_be_brought_by_the_user(render: Any) -> None:
    docs = render({"rbac": {"create": False},
                   "serviceAccount": {"create": False, "name": "platform-operator"}})
    assert kinds(docs) == ["Deployment", "Service"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"


def test_release_names_are_in_cluster_scoped_names(helm_bin: Path,
                                                   helm_env: dict[str, str]) -> None:
    proc = run_helm(helm_bin, helm_env, "template", "blue", str(CHART), "-n", "x",
                    "--kube-version", KUBERNETES_VERSION)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert one(docs, "ClusterRole")["metadata"]["name"] == "blue-trtllm-operator"
    assert one(docs, "ClusterRoleBinding")["metadata"]["name"] == "blue-trtllm-operator"


# --------------------------------------------------------------------------- metrics


def test_metrics_service_targets_the_operator_pod(render: Any) -> None:
    docs = render()
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080,
                                         "targetPort": "metrics", "protocol": "TCP"}]


def test_metrics_disabled_means_no_port_no_service_and_port_zero(render: Any) -> None:
    docs = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
                  (SERVICE_MONITOR_API,))
    assert kinds(docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    assert [p["name"] for p in container(docs)["ports"]] == ["health"]
    assert env_of(docs)["TRTLLM_OPERATOR_METRICS_PORT"] == "0"


def test_service_monitor_only_when_enabled_and_the_api_exists(render: Any) -> None:
    enabled = {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                              "labels": {"release": "prom"}}}}
    assert "ServiceMonitor" not in kinds(render(enabled))
    assert "ServiceMonitor" not in kinds(render(None, (SERVICE_MONITOR_API,)))

    docs = render(enabled, (SERVICE_MONITOR_API,))
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics",
                                             "interval": "15s"}]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(("args", "complaint"), [
    (["--set", "workers=abc"], "workers"),
    (["--set", "workers=0"], "workers"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "logLevel=verbose"], "logLevel"),
    (["--set", "buildDeadlineSeconds=10"], "buildDeadlineSeconds"),
    (["--set", "rateLimits.apiWriteQps=0"], "apiWriteQps"),
    (["--set", "rateLimits.retryBurst=0"], "retryBurst"),
    (["--set", "reconcileErrorAfter=0"], "reconcileErrorAfter"),
    (["--set", "statusDetailSeconds=-1"], "statusDetailSeconds"),
    (["--set", "watchNamespaces={Team_A}"], "watchNamespaces"),
    (["--set", "metrics.port=70000"], "metrics"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "replicas=2"], "replicas"),
    (["--set", "metrics.serviceMonitor.intervall=30s"], "intervall"),
    (["--set", "health.port=8080"], "must differ"),
])
def test_bad_values_are_refused(helm_bin: Path, helm_env: dict[str, str], args: list[str],
                                complaint: str) -> None:
    proc = run_helm(helm_bin, helm_env, "template", RELEASE, str(CHART), "-n", NAMESPACE,
                    "--kube-version", KUBERNETES_VERSION, *args)
    assert proc.returncode != 0, f"accepted {args}"
    assert complaint in proc.stderr, proc.stderr


def test_schema_types_every_default_value() -> None:
    """Every key in values.yaml has a schema, down to the leaves (maps of user data aside)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node: Doc) -> Doc:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def walk(value: Any, node: Doc, path: str) -> Iterator[str]:
        node = resolve(node)
        if "type" not in node and "allOf" not in node:
            yield path
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                if key not in node["properties"]:
                    yield f"{path}.{key}"
                else:
                    yield from walk(child, node["properties"][key], f"{path}.{key}")

    untyped = list(walk(values, schema, "values"))
    assert not untyped, f"values without a schema: {untyped}"


# --------------------------------------------------------------------------- CRDs


def test_chart_crds_are_byte_identical_to_the_generated_ones() -> None:
    """One source of truth: crds/ (generated). The chart ships copies for the first install."""
    source = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    shipped = {p.name: p.read_bytes() for p in sorted((CHART / "crds").iterdir())}
    assert source, "crds/ is empty"
    assert shipped == source, (
        "charts/trtllm-operator/crds/ differs from crds/; run: "
        "rm -f charts/trtllm-operator/crds/* && cp crds/*.yaml charts/trtllm-operator/crds/")


def test_crds_are_not_templates() -> None:
    """CRDs as templates would be deleted (with every LLMEngine) by `helm uninstall`."""
    for template in (CHART / "templates").iterdir():
        assert "CustomResourceDefinition" not in template.read_text(), template.name


LWS_RULES = expand([
    (["leaderworkerset.x-k8s.io"], ["leaderworkersets"],
     ["list", "watch", "create", "patch", "delete"]),
    ([""], ["secrets"], ["create"]),
])


@pytest.mark.parametrize("namespaced", [False, True])
def test_leaderworkerset_rules_only_when_enabled(render: Any, namespaced: bool) -> None:
    base: Doc = {"watchNamespaces": ["team-a"]} if namespaced else {}
    for enabled in (False, True):
        docs = render({**base, "leaderWorkerSet": {"enabled": enabled}})
        role = one(docs, "Role" if namespaced else "ClusterRole", FULLNAME)
        expected = NAMESPACED_RULES | (LWS_RULES if enabled else set())
        if not namespaced:
            expected |= CLUSTER_RULES
        assert rules_of(role) == expected


KEDA_RULES = expand([(["keda.sh"], ["scaledobjects"], ["list", "create", "patch", "delete"])])
POD_MONITOR_RULES = expand([
    (["monitoring.coreos.com"], ["podmonitors"], ["list", "create", "patch", "delete"])])


def test_keda_and_pod_monitor_rules_and_settings_follow_their_values(render: Any) -> None:
    docs = render({"autoscaling": {"keda": False}, "serving": {"podMonitors": False}})
    role = one(docs, "ClusterRole", FULLNAME)
    assert rules_of(role) == (NAMESPACED_RULES - KEDA_RULES - POD_MONITOR_RULES) | CLUSTER_RULES
    env = env_of(docs)
    assert env["TRTLLM_OPERATOR_POD_MONITORS"] == "false"
    assert "TRTLLM_OPERATOR_PROMETHEUS_ADDRESS" not in env
    address = "http://prometheus-operated.monitoring.svc:9090"
    env = env_of(render({"autoscaling": {"prometheusAddress": address}}))
    assert env["TRTLLM_OPERATOR_PROMETHEUS_ADDRESS"] == address
    from trtllm_operator.settings import OperatorSettings
    read = OperatorSettings(_env_file=None, pod_monitors="false",  # type: ignore[call-arg]
                            prometheus_address=address)
    assert (read.pod_monitors, read.prometheus_address) == (False, address)
