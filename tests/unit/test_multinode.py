"""Multi-node serving builders: group shape, the LeaderWorkerSet, the leaders' Service."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from trtllm_operator.api import LLMDeployment, LLMEngine
from trtllm_operator.api.engine import BuiltLimits, Parallelism
from trtllm_operator.deployments import builders, multinode
from trtllm_operator.validation import Reason

H100 = "NVIDIA-H100-80GB-HBM3"
FLAG_TABLE = ROOT / "build-jobs" / "trtllm_flags_1_2.json"
REFERENCE = Path(os.environ.get("TRTLLM_CLI_REFERENCE")
                 or ROOT.parent / "shared" / "reference" / "trtllm-cli-1.2.json")


@pytest.mark.parametrize(("world", "per_node", "shape"), [
    (8, 8, None),                           # one node: a Deployment, not a group
    (16, 8, multinode.GroupShape(2, 8)),    # tp 8 x pp 2 on 8-GPU nodes
    (8, 4, multinode.GroupShape(2, 4)),     # tp 8 on 4-GPU L40S nodes
    (12, 8, multinode.GroupShape(2, 6)),    # two nodes, six GPUs each
    (24, 8, multinode.GroupShape(3, 8)),
    (9, 8, None),                           # 9 over 2 nodes does not divide: refused
])
def test_group_shape(world: int, per_node: int, shape: multinode.GroupShape | None) -> None:
    assert multinode.group_shape(world, per_node) == shape


def test_an_uneven_world_is_refused_with_the_fix() -> None:
    par = Parallelism(tensor=9, pipeline=1)
    finding = multinode.shape_problem(par, H100, 8, "spec.gpu")
    assert finding is not None
    assert finding.reason == Reason.MULTI_NODE_SHAPE_UNEVEN
    assert "9 GPUs need 2" in finding.message
    assert "multiple of 2 (for example 10)" in finding.message
    assert multinode.shape_problem(Parallelism(tensor=8, pipeline=2), H100, 8, "x") is None
    assert multinode.shape_problem(Parallelism(tensor=4, pipeline=1), H100, 8, "x") is None


def _load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u-2", "generation": 1}
    return body


def _objects() -> tuple[LLMDeployment, LLMEngine, builders.Serving]:
    engine = LLMEngine.model_validate(_load("llmengine-llama-3-8b.yaml"))
    body = _load("llmdeployment-llama-3-8b-h100.yaml")
    body["metadata"]["name"] = "big"
    body["spec"]["replicas"] = 2
    d = LLMDeployment.model_validate(body)
    serving = builders.Serving(gpu=H100, fingerprint="f" * 64, path="engines/big/h100",
                               limits=BuiltLimits(max_batch_size=64, max_num_tokens=8192,
                                                  max_seq_len=8192),
                               world_size=16, tensor=8, pipeline=2)
    return d, engine, serving


def _lws() -> dict[str, Any]:
    d, engine, serving = _objects()
    return multinode.leaderworkerset(d, engine, serving, "engines",
                                     multinode.GroupShape(2, 8))


def test_lws_groups_replicas_of_whole_nodes_of_the_gpu_type() -> None:
    lws = _lws()
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    spec = lws["spec"]
    assert spec["replicas"] == 2  # replicas are groups
    assert spec["rolloutStrategy"] == {"type": "RollingUpdate", "rollingUpdateConfiguration": {
        "maxUnavailable": 1, "maxSurge": 0}}
    tpl = spec["leaderWorkerTemplate"]
    assert tpl["size"] == 2
    assert tpl["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        pod = tpl[role]["spec"]
        c = pod["containers"][0]
        assert pod["nodeSelector"]["nvidia.com/gpu.product"] == H100
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti == [{"labelSelector": {"matchExpressions": [
            {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "In", "values": ["big-lws"]}]},
            "topologyKey": "kubernetes.io/hostname"}]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": multinode.SHM_SIZE}
        assert {"name": "mpi-ssh", "mountPath": multinode.SSH_DIR, "readOnly": True} in \
            c["volumeMounts"]
        assert tpl[role]["metadata"]["annotations"][builders.FINGERPRINT_ANNOTATION] == "f" * 64


def test_leader_runs_the_mpi_world_under_trtllm_llmapi_launch() -> None:
    leader = _lws()["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    assert leader["command"][:2] == ["bash", "-c"]
    script = leader["command"][2]
    mpirun = shlex.split(script.split("exec ", 1)[1])
    assert mpirun[:6] == ["mpirun", "--allow-run-as-root", "-np", "16", "--hostfile",
                          multinode.HOSTFILE]
    launch = mpirun.index("trtllm-llmapi-launch")
    serve = mpirun[launch + 1:]
    assert serve[:2] == ["trtllm-serve", "/engine"]
    assert serve[serve.index("--tp_size") + 1] == "8"
    assert serve[serve.index("--pp_size") + 1] == "2"
    assert serve[serve.index("--gpus_per_node") + 1] == "8"
    # Every flag the leader passes is a trtllm-serve flag of the 1.2 table.
    table = json.loads(FLAG_TABLE.read_text())["trtllm_serve"]
    assert {a for a in serve if a.startswith("--")} <= set(table)
    # The leader serves /health; its readiness means the whole world is up.
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health"


def test_gpus_per_node_is_in_the_reference_flag_table() -> None:
    if not REFERENCE.exists():
        pytest.skip(f"TensorRT-LLM 1.2 flag reference not found at {REFERENCE}")
    args = json.loads(REFERENCE.read_text())["trtllm_serve"]["args"]
    entry = next(a for a in args if a.get("flag") == "--gpus_per_node")
    assert entry["type"] == "int"


def test_hostfile_names_the_groups_stable_pod_names(tmp_path: Path) -> None:
    import subprocess

    script = multinode.hostfile_script(8).replace(multinode.HOSTFILE, str(tmp_path / "h"))
    subprocess.run(["sh", "-c", script], check=True, env={
        "LWS_LEADER_ADDRESS": "big-1.big.ml", "LWS_GROUP_SIZE": "3", "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "h").read_text().splitlines() == [
        "big-1.big.ml slots=8", "big-1-1.big.ml slots=8", "big-1-2.big.ml slots=8"]


def test_workers_run_sshd_and_are_ready_when_it_listens() -> None:
    worker = _lws()["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    assert "sshd -D" in worker["command"][2]
    assert f"-p {multinode.SSH_PORT}" in worker["command"][2]
    assert worker["readinessProbe"]["tcpSocket"] == {"port": "ssh"}
    assert worker["ports"] == [{"name": "ssh", "containerPort": multinode.SSH_PORT,
                                "protocol": "TCP"}]
    assert "startupProbe" not in worker


def test_service_selects_leaders_only() -> None:
    d, engine, _ = _objects()
    svc = multinode.leader_service(d, engine.metadata.name)
    assert svc["spec"]["selector"] == {**builders.selector(d),
                                       "leaderworkerset.sigs.k8s.io/worker-index": "0"}


def test_ssh_secret_holds_the_pair_and_is_owned() -> None:
    d, engine, _ = _objects()
    s = multinode.ssh_secret(d, engine.metadata.name, "PRIV", "PUB")
    assert s["stringData"] == {"id_ed25519": "PRIV", "authorized_keys": "PUB"}
    assert s["metadata"]["ownerReferences"][0]["uid"] == "u-2"


@pytest.mark.parametrize(("strategy", "expected"), [
    (None, {"maxUnavailable": 1, "maxSurge": 0}),
    ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
     {"maxUnavailable": 1, "maxSurge": 1}),
    ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}},
     {"maxUnavailable": "50%", "maxSurge": 0}),
    ({"type": "Recreate"}, {"maxUnavailable": "100%", "maxSurge": 0}),
])
def test_the_rollout_follows_spec_strategy_in_groups(strategy: dict[str, Any] | None,
                                                      expected: dict[str, Any]) -> None:
    body = _load("llmdeployment-llama-3-8b-h100.yaml")
    if strategy is not None:
        body["spec"]["strategy"] = strategy
    d = LLMDeployment.model_validate(body)
    assert multinode.rollout_strategy(d) == {"type": "RollingUpdate",
                                             "rollingUpdateConfiguration": expected}


def test_the_multi_node_sample_is_served_as_groups_of_two_whole_h100_nodes() -> None:
    from trtllm_operator import gpus
    from trtllm_operator.deployments.controller import placement
    from trtllm_operator.validation import ClusterFacts, GPUPool

    engine = LLMEngine.model_validate(_load("llmengine-llama-3-1-405b-tp8-pp2.yaml"))
    h100 = gpus.gpu_type("h100")
    cluster = ClusterFacts({H100: GPUPool((8, 8, 8, 8), h100.compute_capability)})
    assert engine.spec.build.gpus == 8  # built on one node, ranks in turn
    place = placement(engine, H100, cluster, "installed")
    assert (place.shape, place.problem) == (multinode.GroupShape(2, 8), None)
    # Without LeaderWorkerSet the same sample is refused with how to install it.
    refused = placement(engine, H100, cluster, "missing").problem
    assert refused is not None
    assert refused.reason == Reason.LEADER_WORKER_SET_REQUIRED


def test_the_lws_is_not_named_like_the_service_and_long_names_stay_dns_labels() -> None:
    d, engine, serving = _objects()
    lws = multinode.leaderworkerset(d, engine, serving, "engines", multinode.GroupShape(2, 8))
    # LWS makes a headless Service of its own name; the endpoint's Service is the deployment's.
    assert lws["metadata"]["name"] == "big-lws" != multinode.leader_service(d, "e")[
        "metadata"]["name"]
    anti = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["affinity"][
        "podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][-1]
    assert anti["labelSelector"]["matchExpressions"][0]["values"] == ["big-lws"]
    for length in (50, 51, 63):
        name = "a" * (length - 1) + "b"
        long = d.model_copy(update={"metadata": d.metadata.model_copy(update={"name": name})})
        got = multinode.lws_name(long)
        assert len(got) + len("-99999-999") <= 63, got
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", got)
    other = d.model_copy(update={"metadata": d.metadata.model_copy(
        update={"name": "a" * 62 + "c"})})
    assert multinode.lws_name(other) != multinode.lws_name(long)
