"""``make bench`` keeps working: a tiny fleet through both modes reaches Ready and the JSON
carries every figure. Correctness only; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from trtllm_operator.localcluster import bench


def test_a_tiny_fleet_converges_in_both_modes_and_the_report_has_its_fields(
        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = bench.main(["--deployments", "3", "--idle-seconds", "2", "--timeout", "240",
                     "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, result
    for mode in ("floor", "operator"):
        r = result[mode]
        assert r["converged"] is True
        assert r["counts"]["exist"] == r["counts"]["available"] == 3
        for key in ("all_exist_s", "all_available_s", "apply_to_deployment_ms",
                    "requests_run", "requests_idle", "writes_run", "writes_idle"):
            assert key in r, (mode, key)
        assert r["requests_run"].get("POST deployments" if mode == "floor"
                                     else "APPLY deployments", 0) >= 3
    op = result["operator"]
    assert op["counts"]["ready"] == 3
    assert op["all_ready_s"] is not None
    assert op["operator_peak_rss_mib"] > 0
    assert op["operator_cpu_s"] > 0
