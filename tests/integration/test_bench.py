"""``make bench`` keeps working: a tiny fleet through both modes reaches Ready and the JSON
carries every figure. Correctness only; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from trtllm_operator.localcluster import bench


def test_a_tiny_fleet_converges_in_every_mode_and_the_report_has_its_fields(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(["--deployments", "3", "--idle-seconds", "2", "--timeout", "240",
                     "--modes", "floor,objects,operator", "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, result
    for mode in ("floor", "objects", "operator"):
        r = result[mode]
        assert r["converged"] is True
        assert r["counts"]["exist"] == r["counts"]["available"] == 3
        for key in ("all_exist_s", "all_available_s", "apply_to_deployment_ms",
                    "requests_run", "requests_idle", "writes_run", "writes_idle"):
            assert key in r, (mode, key)
        # New children are created, by the bare client and by the operator alike.
        assert r["requests_run"].get("POST deployments", 0) >= 3
    for mode in ("objects", "operator"):
        r = result[mode]
        assert r["counts"]["ready"] == 3
        assert r["all_ready_s"] is not None
        assert r["requests_run"].get("POST llmdeployments", 0) == 3
        assert r["requests_run"].get("PATCH llmdeployments/status", 0) >= 3
    # The objects mode writes exactly what it stands for: two statuses and one Event each.
    assert result["objects"]["requests_run"]["PATCH llmdeployments/status"] == 6
    assert result["objects"]["events_by_reason"].get("bench LLMDeployment Ready") == 3
    op = result["operator"]
    assert op["operator_peak_rss_mib"] > 0
    assert op["operator_cpu_s"] > 0


def test_a_tiny_engine_fleet_converges_with_one_build_job_per_target_and_counts_node_changes(
        tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    rc = bench.main(["--modes", "engines", "--engines", "2", "--node-change", "2",
                     "--nodes", "1", "--timeout", "240", "--out", str(out)])
    r = json.loads(out.read_text())["engines"]
    assert rc == 0, r
    assert r["built"] == 2
    assert r["jobs"]["engine-build"] == 2 * 3
    assert r["build_jobs_per_target"] == {"1": 6}
    for change in ("join", "leave"):
        c = r[f"node_{change}"]
        verb = "POST nodes" if change == "join" else "DELETE nodes"
        assert c["requests"][verb] == 2, c
        assert "operator" in c
        assert c["writes"] >= 2
