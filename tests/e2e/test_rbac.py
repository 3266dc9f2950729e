"""Least privilege, proven: the operator runs as the Helm chart's ServiceAccount (a token from
the TokenRequest API), so the real API server enforces the chart's RBAC. The whole engine-build
and serving flow passes under it, and removing any one rule of the chart's ClusterRole makes
some part of the flow fail -- so no rule is superfluous.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import ROOT, ClusterUnderTest, InstallCRDs, Kubectl
from tests.e2e.conftest import H100, L40S, exists, read_or_none, small_engine
from trtllm_operator.deployments import multinode
from trtllm_operator.localcluster import stages
from trtllm_operator.localcluster.binaries import BinaryBuilder
from trtllm_operator.localcluster.cluster import static_rwx_claim
from trtllm_operator.localcluster.extcrds import INFERENCE_EXTENSION, KEDA, PROMETHEUS_OPERATOR
from trtllm_operator.localcluster.operator_process import OperatorProcess

HEALTHY_DEADLINE = 120.0
BROKEN_DEADLINE = 40.0  # well under the 60 s resync: a missing watch cannot hide behind it

pytestmark = pytest.mark.usefixtures("gpu_fleet")

SERVE_OPTIONS = {"kv_cache_config": {"enable_block_reuse": True}}
SERVE_OPTIONS_EDITED = {"kv_cache_config": {"enable_block_reuse": False}}

CHECKS = ("engine built", "auto targets built", "build failure explained",
          "serve options written", "serve options changed", "deployment ready", "events recorded",
          "removed target stopped", "deployment drift repaired", "service recreated",
          "deletion held while in use", "engine released", "fleet ready on two gpu types",
          "inference pool made", "slice removed", "inference pool removed",
          "hpa made", "hpa removed", "scaledobject made", "scaledobject removed",
          "podmonitor made", "podmonitor removed")
FLEET_POOL = f"rbac{uuid.uuid4().hex[:6]}"
"""Label value of the nodes the flows' fleets run on (one H100 and one L40S node)."""
PICKER = {"name": "llama-epp", "port": 9002}
PROM = "http://prometheus.monitoring.svc:9090"


# --------------------------------------------------------------------------- the flow


class Flow:
    """Every behaviour the operator's permissions serve, driven step by step in a namespace."""

    checks: tuple[str, ...] = CHECKS
    """What :meth:`run` waits to have passed."""

    def __init__(self, api: client.ApiClient, kubectl: Kubectl, namespace: str) -> None:
        self.api, self.kubectl, self.ns = api, kubectl, namespace
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.passed: set[str] = set()
        self.step = 0
        self.fleet_step = 0
        self.scaled_step = 0
        self.keda_step = 0

    def _apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.ns, "-f", "-", input=yaml.safe_dump(obj))

    @staticmethod
    def _server(options: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
                "metadata": {"name": "server"},
                "spec": {"engineRef": {"name": "served"}, "gpu": H100, "replicas": 1,
                         "serve": {"extraLlmApiOptions": options}}}

    def _engine(self, name: str, targets: list[str], batch: int, **build: Any) -> dict[str, Any]:
        """An engine with its own fingerprint (``batch``): env is not a build input, so
        engines differing only in SIM_* env vars would share one build."""
        obj = small_engine(name, targets, **build)
        obj["spec"]["build"]["limits"]["maxBatchSize"] = batch
        return obj

    def start(self) -> None:
        pv, pvc = static_rwx_claim(self.ns, "trtllm-engines", f"engines-{self.ns}")
        self.core.create_persistent_volume(pv)
        self.core.create_namespaced_persistent_volume_claim(self.ns, pvc)
        self.core.create_namespaced_secret(self.ns, {"metadata": {"name": "hf-token"},
                                                     "stringData": {"HF_TOKEN": "x"}})
        summary = json.dumps({"phase": "Failed", "reason": "TrtllmBuildMissing",
                              "message": "no trtllm-build in this image"})
        self._apply(self._engine("served", [H100], 61))
        self._apply(self._engine("anywhere", ["auto"], 62, quantization={"format": "fp8"}))
        self._apply(self._engine("broken", [L40S], 63, env=[
            {"name": stages.EXIT_CODE_ENV, "value": "3"},
            {"name": stages.MESSAGE_ENV, "value": summary}]))
        self._apply(self._engine("shrinking", [H100, L40S], 64, env=[
            {"name": stages.DURATION_ENV, "value": "600s"}]))
        # extraLlmApiOptions: the operator creates a ConfigMap for them (applied on a change).
        self._apply(self._server(SERVE_OPTIONS))
        # One fleet over two GPU types, with an InferencePool (the CRD is installed).
        self._apply(self._engine("both", [H100, L40S], 65))
        self._apply(self._fleet([H100, L40S], PICKER))
        # Autoscaling and monitoring, on their own engine (the steps above delete "served"):
        # an HPA (provider hpa), a ScaledObject and a PodMonitor (their CRDs are installed).
        self._apply(self._engine("scaling", [H100], 65))
        for name, autoscaling in (("scaled", {"provider": "hpa", "maxReplicas": 2}),
                                  ("keda", {"maxReplicas": 2, "prometheusAddress": PROM})):
            self._apply({"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
                         "metadata": {"name": name},
                         "spec": {"engineRef": {"name": "scaling"}, "gpu": H100,
                                  "autoscaling": autoscaling}})

    def _fleet(self, gpus: list[str], picker: dict[str, Any] | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"engineRef": {"name": "both"}, "replicas": len(gpus),
                                "slices": [{"gpu": g} for g in gpus],
                                "nodeSelector": {"rbac-fleet": FLEET_POOL}}
        if picker is not None:
            spec["inferencePool"] = {"endpointPickerRef": picker}
        return {"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
                "metadata": {"name": "fleet"}, "spec": spec}

    def _has_pool(self) -> bool:
        return exists(lambda: self.objects.get_namespaced_custom_object(
            "inference.networking.k8s.io", "v1", self.ns, "inferencepools", "fleet"))

    def _advance_fleet(self, ready: Any) -> None:
        fleet = self._get("llmdeployments", "fleet")
        if self.fleet_step == 0:
            if self._has_pool():
                self.passed.add("inference pool made")
            if ready(fleet) and len(((fleet or {}).get("status") or {}).get("slices") or []) == 2:
                self.passed.add("fleet ready on two gpu types")
            if {"inference pool made", "fleet ready on two gpu types"} <= self.passed:
                # The L40S slice and the pool taken off: deletions only.
                self._apply(self._fleet([H100], None))
                self.fleet_step = 1
        elif self.fleet_step == 1:
            names = {d.metadata.name for d in self.apps.list_namespaced_deployment(self.ns).items}
            if "fleet-nvidia-h100-80gb-hbm3" in names and "fleet-nvidia-l40s" not in names:
                self.passed.add("slice removed")
            if not self._has_pool():
                self.passed.add("inference pool removed")

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = read_or_none(
            lambda: self.objects.get_namespaced_custom_object(
                "trtllm.dev", "v1alpha1", self.ns, plural, name))
        return obj

    @staticmethod
    def _cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                found: dict[str, Any] = c
                return found
        return {}

    def _exists(self, group: str, version: str, plural: str, name: str) -> bool:
        return exists(lambda: self.objects.get_namespaced_custom_object(
            group, version, self.ns, plural, name))

    def _advance_scaling(self) -> None:
        hpa = self._exists("autoscaling", "v2", "horizontalpodautoscalers", "scaled")
        if self.scaled_step == 0 and hpa:
            self.passed.add("hpa made")
            self.kubectl("patch", "-n", self.ns, "llmdeployment/scaled", "--type=json",
                         "-p", '[{"op": "remove", "path": "/spec/autoscaling"}]')
            self.scaled_step = 1
        elif self.scaled_step == 1 and not hpa:
            self.passed.add("hpa removed")
        so = self._exists("keda.sh", "v1alpha1", "scaledobjects", "keda")
        pm = self._exists("monitoring.coreos.com", "v1", "podmonitors", "keda")
        if self.keda_step == 0:
            if so:
                self.passed.add("scaledobject made")
            if pm:
                self.passed.add("podmonitor made")
            if so and pm:
                self.kubectl("patch", "-n", self.ns, "llmdeployment/keda", "--type=json", "-p",
                             '[{"op": "remove", "path": "/spec/autoscaling"}, {"op": "add", '
                             '"path": "/spec/serve", "value": {"metrics": false}}]')
                self.keda_step = 1
        else:
            if not so:
                self.passed.add("scaledobject removed")
            if not pm:
                self.passed.add("podmonitor removed")

    def _jobs(self, gpu: str) -> list[Any]:
        return [j for j in self.batch.list_namespaced_job(self.ns).items
                if j.metadata.labels.get("trtllm.dev/engine") == "shrinking"
                and j.metadata.labels.get("trtllm.dev/gpu-product") == gpu
                and j.metadata.deletion_timestamp is None]

    def advance(self) -> None:
        """Look at the cluster once; record checks that passed and take the next step."""
        def ready(obj: dict[str, Any] | None) -> bool:
            return self._cond(obj, "Ready").get("status") == "True"

        served = self._get("llmengines", "served")
        if self.step < 3 and ready(served):
            self.passed.add("engine built")
        anywhere = self._get("llmengines", "anywhere")
        if ready(anywhere) and (anywhere or {}).get("status", {}).get("targets"):
            self.passed.add("auto targets built")
        broken = self._get("llmengines", "broken") or {}
        if any(t.get("reason") == "TrtllmBuildMissing"
               for t in broken.get("status", {}).get("targets") or []):
            self.passed.add("build failure explained")
        events = self.core.list_namespaced_event(
            self.ns, field_selector="involvedObject.name=served,reason=Built").items
        if events:
            self.passed.add("events recorded")

        shrinking = self._get("llmengines", "shrinking") or {}
        if "removed target stopped" not in self.passed:
            targets = shrinking.get("spec", {}).get("targets")
            if targets == [H100, L40S] and self._jobs(L40S):
                shrinking["spec"]["targets"] = [H100]
                self._apply({k: shrinking[k] for k in ("apiVersion", "kind", "spec")}
                            | {"metadata": {"name": "shrinking"}})
            elif targets == [H100] and not self._jobs(L40S):
                self.passed.add("removed target stopped")

        self._advance_fleet(ready)
        self._advance_scaling()
        server = self._get("llmdeployments", "server")
        if "serve options changed" not in self.passed:
            try:
                options = self.core.read_namespaced_config_map("server-llm-api-options", self.ns)
                written = yaml.safe_load((options.data or {}).get(
                    "extra-llm-api-options.yaml", ""))
                # Metrics are on by default: the file also turns them on.
                if written == SERVE_OPTIONS | {"return_perf_metrics": True} and (
                        "serve options written" not in self.passed):
                    self.passed.add("serve options written")
                    # Edited: the ConfigMap the operator created is now applied (a patch).
                    self._apply(self._server(SERVE_OPTIONS_EDITED))
                elif written == SERVE_OPTIONS_EDITED | {"return_perf_metrics": True}:
                    self.passed.add("serve options changed")
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if self.step == 0 and ready(server):
            self.passed.add("deployment ready")
            # A hand edit that starts no pod: only a watch on Deployments can notice it.
            self.apps.patch_namespaced_deployment("server", self.ns, {"spec": {"strategy": {
                "rollingUpdate": {"maxSurge": 5}}}})
            self.step = 1
        elif self.step == 1:
            dep = self.apps.read_namespaced_deployment("server", self.ns)
            if dep.spec.strategy.rolling_update.max_surge == 0:
                self.passed.add("deployment drift repaired")
                self.core.delete_namespaced_service("server", self.ns)
                self.step = 2
        elif self.step == 2:
            try:
                self.core.read_namespaced_service("server", self.ns)
                self.passed.add("service recreated")
                self.kubectl("delete", "llmengine", "served", "-n", self.ns, "--wait=false")
                self.step = 3
            except ApiException as exc:
                if exc.status != 404:
                    raise
        elif self.step == 3:
            if served is not None and self._cond(served, "Ready").get("reason") == "InUse":
                self.passed.add("deletion held while in use")
                self.kubectl("delete", "llmdeployment", "server", "-n", self.ns, "--wait=false")
                self.step = 4
        elif self.step == 4 and served is None:
            self.passed.add("engine released")

    def cleanup(self) -> None:
        self.core.delete_namespace(self.ns)
        try:
            self.core.delete_persistent_volume(f"engines-{self.ns}")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def run(self, deadline: float) -> set[str]:
        end = time.monotonic() + deadline
        while time.monotonic() < end and len(self.passed) < len(self.checks):
            self.advance()
            time.sleep(0.5)
        return set(self.passed)


# --------------------------------------------------------------------------- fixtures


def _token_kubeconfig(core: client.CoreV1Api, admin_kubeconfig: Path, sa: str, namespace: str,
                      path: Path) -> Path:
    token = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 7200}}).status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "c"}))
    return path


def _namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except ApiException:
            time.sleep(0.2)
    raise AssertionError(f"no default ServiceAccount in {name}")


@pytest.fixture(scope="module")
def fleet_nodes(cluster: ClusterUnderTest) -> list[str]:
    """The nodes the flows' fleets run on, apart from the shared fleet the builds use."""
    labels = {"rbac-fleet": FLEET_POOL}
    return [*cluster.add_nodes("h100", 1, labels=labels),
            *cluster.add_nodes("l40s", 1, labels=labels)]


@pytest.fixture
def inference_crds(third_party_crds: InstallCRDs, fleet_nodes: list[str]) -> list[str]:
    """The Inference Extension CRDs, so that the InferencePool rules have something to do."""
    return third_party_crds(INFERENCE_EXTENSION)


@pytest.fixture(scope="module")
def optional_crds(cluster: ClusterUnderTest) -> Iterator[None]:
    """KEDA's and the Prometheus Operator's CRDs (no controllers) for this module: the chart's
    rules for ScaledObjects and PodMonitors are proven like the others."""
    local = cluster.require_local()
    for source in (KEDA, PROMETHEUS_OPERATOR):
        local.install_crds(source)
    yield
    for source in (KEDA, PROMETHEUS_OPERATOR):
        local.remove_crds(source)


@contextmanager
def _installed_chart(cluster: ClusterUnderTest, core: client.CoreV1Api, release_prefix: str,
                     namespace_prefix: str, *values: str) -> Iterator[dict[str, Any]]:
    """The chart installed by Helm in a fresh namespace (``values``: --set assignments),
    uninstalled after: its namespace, ServiceAccount and ClusterRole rules."""
    helm = BinaryBuilder().ensure(["helm"])["helm"]
    release = f"{release_prefix}-{uuid.uuid4().hex[:5]}"
    namespace = _namespace(core, namespace_prefix)
    base = [str(helm), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace]
    sets = [arg for value in values for arg in ("--set", value)]
    subprocess.run([*base, "install", release, str(ROOT / "charts/trtllm-operator"),
                    "--skip-crds", "--set", "image.repository=example.com/trtllm-operator",
                    *sets], check=True, capture_output=True, text=True)
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    role = next(r for r in rbac.list_cluster_role(
        label_selector=f"app.kubernetes.io/instance={release}").items)
    binding = next(b for b in rbac.list_cluster_role_binding(
        label_selector=f"app.kubernetes.io/instance={release}").items)
    try:
        yield {"namespace": namespace, "serviceAccount": binding.subjects[0].name,
               "rules": [r.to_dict() for r in role.rules]}
    finally:
        subprocess.run([*base, "uninstall", release], check=False, capture_output=True)
        core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def chart(cluster: ClusterUnderTest, crds: list[str], core: client.CoreV1Api,
          optional_crds: None) -> Iterator[dict[str, Any]]:
    """The chart installed with its defaults (cluster-wide), as Helm users get it."""
    with _installed_chart(cluster, core, "rbac", "trtllm-system") as installed:
        yield installed


def _rules_manifest(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"apiGroups": r["api_groups"], "resources": r["resources"], "verbs": r["verbs"]}
            for r in rules]


def _describe(rule: dict[str, Any]) -> str:
    groups = ",".join(g or "core" for g in rule["apiGroups"])
    return f"{groups}/{','.join(rule['resources'])}:{','.join(rule['verbs'])}"


# The API server's words for an RBAC refusal (the authorizer's "forbidden" reason), as they
# reach the operator's log or a condition: ...is forbidden: User "system:serviceaccount:ns:sa"
# cannot list resource "llmengines" in API group "trtllm.dev" in the namespace "ns".
DENIAL = re.compile(r'User \\?"(?P<user>[^"\\]+)\\?" cannot (?P<verb>\w+) resource '
                    r'\\?"(?P<resource>[^"\\]+)\\?" in API group \\?"(?P<group>[^"\\]*)\\?"')


def _denial(rule: dict[str, Any], user: str, *texts: str) -> str | None:
    """The first refusal in ``texts`` of one of the rule's verbs on one of its resources."""
    for text in texts:
        for m in DENIAL.finditer(text):
            if (m["user"] == user and m["verb"] in rule["verbs"]
                    and m["resource"] in rule["resources"] and m["group"] in rule["apiGroups"]):
                return m.group(0).replace("\\", "")
    return None


def _conditions_text(flow: Flow) -> str:
    """Every condition message on the flow's objects (ReconcileError carries the refusal)."""
    messages = []
    for plural in ("llmengines", "llmdeployments"):
        for obj in flow.objects.list_namespaced_custom_object(
                "trtllm.dev", "v1alpha1", flow.ns, plural)["items"]:
            messages += [c.get("message") or ""
                         for c in (obj.get("status") or {}).get("conditions") or []]
    return "\n".join(messages)


# An RBAC denial in the operator's log ('... is forbidden: User "system:serviceaccount:..."
# cannot list resource ...'), its quotes escaped or not.
ACCOUNT_DENIAL = re.compile(r'User \\?"system:serviceaccount:[^"]+" cannot [^"]*')


def _passes_without_denials(kubeconfig: Path, log: Path, flow: Flow, deadline: float) -> None:
    """An operator on ``kubeconfig`` passes every check of ``flow``, with no RBAC denial at
    all in its log. Other refusals, such as writes into namespaces other tests are deleting,
    are not about permissions."""
    op = OperatorProcess(kubeconfig, log)
    try:
        op.start()
        flow.start()
        passed = flow.run(deadline)
        assert passed == set(flow.checks), (
            f"missing: {sorted(set(flow.checks) - passed)}\n{op.tail(60)}")
        denials = ACCOUNT_DENIAL.findall(op.log_path.read_text())
        assert not denials, denials[:5]
    finally:
        op.stop()
        flow.cleanup()


Outcome = tuple[str, set[str], str | None, str]
"""A flow run without one rule: the rule, the checks passed, the denial of it seen (or None),
the operator's log tail."""


def _run_without(rule: dict[str, Any], rules: list[dict[str, Any]], prefix: str,
                 make_flow: Callable[[str], Flow], deadline: float, core: client.CoreV1Api,
                 cluster: ClusterUnderTest, tmp_path: Path) -> Outcome:
    """Run a fresh namespace's flow under an operator (watching that namespace only) whose
    ClusterRole has ``rules`` but ``rule``."""
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    namespace = _namespace(core, prefix)
    case = namespace  # the ClusterRole and its binding: as unique as the namespace
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    rbac.create_cluster_role({"metadata": {"name": case},
                              "rules": [r for r in rules if r is not rule]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": case},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": case},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]})
    kubeconfig = _token_kubeconfig(core, cluster.kubeconfig, "operator", namespace,
                                   tmp_path / f"{case}.kubeconfig")
    op = OperatorProcess(kubeconfig, tmp_path / f"{case}.log",
                         extra_args=[f"--namespace={namespace}"])
    flow = make_flow(namespace)
    try:
        op.start()
        flow.start()
        passed = flow.run(deadline)
        seen = _denial(rule, f"system:serviceaccount:{namespace}:operator",
                       op.log_path.read_text(errors="replace"), _conditions_text(flow))
        return _describe(rule), passed, seen, op.tail(20)
    finally:
        op.stop()
        rbac.delete_cluster_role_binding(case)
        rbac.delete_cluster_role(case)
        flow.cleanup()


def _assert_every_rule_needed(results: list[Outcome], checks: tuple[str, ...],
                              unprovable: frozenset[str] = frozenset()) -> None:
    """Each removal broke part of the flow, and not just as a flow that stalled: the API
    server's refusal of the very verb and resource the removed rule granted is what the
    operator reported (in its log or status). ``unprovable``: rules this cluster cannot show
    a use of."""
    superfluous = [(rule, tail) for rule, passed, _, tail in results
                   if passed == set(checks) and rule not in unprovable]
    assert not superfluous, f"rules whose removal broke nothing: {superfluous}"
    unexplained = [(rule, tail) for rule, _, seen, tail in results
                   if seen is None and rule not in unprovable]
    assert not unexplained, f"removals with no denial of that rule in log or status: " \
                            f"{unexplained}"
    for rule, passed, seen, _ in results:  # for the record
        print(f"without {rule}: fails {sorted(set(checks) - passed)}; saw: {seen}")


# --------------------------------------------------------------------------- tests


def test_the_whole_flow_passes_under_the_charts_service_account(
        chart: dict[str, Any], cluster: ClusterUnderTest, core: client.CoreV1Api,
        api_client: client.ApiClient, kubectl: Kubectl, tmp_path: Path,
        inference_crds: list[str]) -> None:
    kubeconfig = _token_kubeconfig(core, cluster.kubeconfig, chart["serviceAccount"],
                                   chart["namespace"], tmp_path / "sa.kubeconfig")
    flow = Flow(api_client, kubectl, _namespace(core, "rbac-full"))
    _passes_without_denials(kubeconfig, tmp_path / "operator.log", flow, HEALTHY_DEADLINE)


def test_removing_any_one_rule_breaks_part_of_the_flow_with_a_denial_naming_it(
        chart: dict[str, Any], cluster: ClusterUnderTest, core: client.CoreV1Api,
        api_client: client.ApiClient, kubectl: Kubectl, tmp_path: Path,
        inference_crds: list[str]) -> None:
    rules = _rules_manifest(chart["rules"])
    assert len(rules) >= 10

    def run_without(index: int) -> Outcome:
        return _run_without(rules[index], rules, f"rbac-drop{index}",
                            lambda ns: Flow(api_client, kubectl, ns), BROKEN_DEADLINE, core,
                            cluster, tmp_path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run_without, range(len(rules))))
    # kwok's nodes serve no pod logs: download progress (the only use of pods/log) cannot be
    # seen here, with the rule or without it, and a refused log read only loses the figures.
    _assert_every_rule_needed(results, CHECKS, unprovable=frozenset({"core/pods/log:get"}))


# --------------------------------------------------------------------------- multi-node (LWS)

LWS_CHECKS = ("one-node serving", "groups serving", "back to one node")
LWS_HEALTHY_DEADLINE = 240.0
LWS_BROKEN_DEADLINE = 150.0  # the healthy flow takes about a minute


class MultiNodeFlow(Flow):
    """An engine rebuilt wider than a node and back: a Deployment, then LeaderWorkerSet
    groups (the Deployment deleted), then a Deployment again (the LWS deleted), on two H100
    nodes of its own."""

    checks = LWS_CHECKS

    def __init__(self, api: client.ApiClient, kubectl: Kubectl, namespace: str,
                 cluster: ClusterUnderTest) -> None:
        super().__init__(api, kubectl, namespace)
        self.cluster = cluster
        self.pool = f"p{uuid.uuid4().hex[:8]}"
        self.nodes: list[str] = []
        self.first_fp: str | None = None

    def _wide(self, pipeline: int) -> dict[str, Any]:
        return self._engine("wide", [H100], 71, parallelism={"tensor": 8, "pipeline": pipeline},
                            gpus=8)

    def start(self) -> None:
        self.nodes = self.cluster.add_nodes("h100", 2, labels={"test-pool": self.pool})
        pv, pvc = static_rwx_claim(self.ns, "trtllm-engines", f"engines-{self.ns}")
        self.core.create_persistent_volume(pv)
        self.core.create_namespaced_persistent_volume_claim(self.ns, pvc)
        self.core.create_namespaced_secret(self.ns, {"metadata": {"name": "hf-token"},
                                                     "stringData": {"HF_TOKEN": "x"}})
        self._apply(self._wide(1))
        self._apply({"apiVersion": "trtllm.dev/v1alpha1", "kind": "LLMDeployment",
                     "metadata": {"name": "wide"},
                     "spec": {"engineRef": {"name": "wide"}, "gpu": H100, "replicas": 1,
                              "nodeSelector": {"test-pool": self.pool}}})

    def advance(self) -> None:
        llmd = self._get("llmdeployments", "wide") or {}
        ready = self._cond(llmd, "Ready").get("status") == "True"
        fp = (llmd.get("status") or {}).get("engineFingerprint")
        single = exists(lambda: self.apps.read_namespaced_deployment("wide", self.ns))
        groups = exists(lambda: self.objects.get_namespaced_custom_object(
            multinode.LWS_GROUP, multinode.LWS_VERSION, self.ns, multinode.LWS_PLURAL,
            "wide-lws"))
        if self.step == 0 and ready and single and not groups:
            self.passed.add("one-node serving")
            self.first_fp = fp
            self._apply(self._wide(2))
            self.step = 1
        elif self.step == 1 and ready and fp != self.first_fp and groups and not single:
            self.passed.add("groups serving")
            self._apply(self._wide(1))
            self.step = 2
        elif self.step == 2 and ready and fp == self.first_fp and single and not groups:
            self.passed.add("back to one node")

    def cleanup(self) -> None:
        super().cleanup()
        self.cluster.remove_nodes(self.nodes)


@pytest.fixture(scope="module")
def lws_chart(cluster: ClusterUnderTest, crds: list[str], core: client.CoreV1Api, lws: str,
              chart: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The chart installed with leaderWorkerSet.enabled=true; ``lwsRules`` are the rules it
    adds to the default install's."""
    with _installed_chart(cluster, core, "rbac-lws", "trtllm-lws",
                          "leaderWorkerSet.enabled=true") as installed:
        rules = _rules_manifest(installed["rules"])
        default = {_describe(r) for r in _rules_manifest(chart["rules"])}
        yield {**installed, "rules": rules,
               "lwsRules": [r for r in rules if _describe(r) not in default]}


def test_multi_node_serving_and_shape_switches_pass_under_the_lws_charts_account(
        lws_chart: dict[str, Any], cluster: ClusterUnderTest, core: client.CoreV1Api,
        api_client: client.ApiClient, kubectl: Kubectl, tmp_path: Path) -> None:
    kubeconfig = _token_kubeconfig(core, cluster.kubeconfig, lws_chart["serviceAccount"],
                                   lws_chart["namespace"], tmp_path / "sa.kubeconfig")
    flow = MultiNodeFlow(api_client, kubectl, _namespace(core, "rbac-lws"), cluster)
    _passes_without_denials(kubeconfig, tmp_path / "operator.log", flow,
                            LWS_HEALTHY_DEADLINE)


def test_removing_any_one_lws_rule_breaks_multi_node_serving_with_a_denial_naming_it(
        lws_chart: dict[str, Any], cluster: ClusterUnderTest, core: client.CoreV1Api,
        api_client: client.ApiClient, kubectl: Kubectl, tmp_path: Path) -> None:
    rules, extra = lws_chart["rules"], lws_chart["lwsRules"]
    # LeaderWorkerSets (list+watch, create+patch, delete), Secrets create. (Deployments delete
    # is in the default rules: a slice taken off the list needs it too.)
    assert sorted(_describe(r) for r in extra) == [
        "core/secrets:create",
        "leaderworkerset.x-k8s.io/leaderworkersets:create,patch",
        "leaderworkerset.x-k8s.io/leaderworkersets:delete",
        "leaderworkerset.x-k8s.io/leaderworkersets:list,watch"]

    def run_without(rule: dict[str, Any]) -> Outcome:
        return _run_without(rule, rules, "rbac-lws-drop",
                            lambda ns: MultiNodeFlow(api_client, kubectl, ns, cluster),
                            LWS_BROKEN_DEADLINE, core, cluster, tmp_path)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run_without, extra))
    _assert_every_rule_needed(results, LWS_CHECKS)
