"""The trtllm_jobs package as it is delivered: standard library only, one ConfigMap key per
file, runnable with ``python3 -m trtllm_jobs.<kind>`` from the folder the pod mounts it in."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trtllm_jobs
from trtllm_operator.engines import jobs

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "build-jobs" / "trtllm_jobs"
FAKE_SITE = Path(__file__).resolve().parent / "build_job_standins" / "fake_site"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_every_module_imports_only_the_standard_library(path: Path) -> None:
    # Relative imports (level > 0) are the package's own; anything else must be stdlib: the
    # jobs run in NVIDIA's images, where only huggingface_hub is looked up, lazily, by name.
    outside = {n for n in _imports(path) if n not in sys.stdlib_module_names}
    assert outside <= {"__future__"}, outside


def test_every_job_kind_is_an_entry_module_with_main() -> None:
    assert trtllm_jobs.JOB_KINDS == ("build", "download", "quantize")
    for kind in trtllm_jobs.JOB_KINDS:
        module = importlib.import_module(f"trtllm_jobs.{kind}")
        assert callable(module.main)
        assert 'if __name__ == "__main__":' in (PACKAGE / f"{kind}.py").read_text()
        assert jobs.job_command(kind) == ["python3", "-m", f"trtllm_jobs.{kind}"]


def test_the_configmap_alone_runs_as_the_package_in_a_plain_interpreter(
        tmp_path: Path) -> None:
    # What the pod gets: the ConfigMap's keys as files in <workingDir>/trtllm_jobs/, run with
    # `python3 -m` from <workingDir> by an interpreter that has no trtllm_jobs installed.
    data = jobs.script_configmap("ml", jobs.entrypoint_files())["data"]
    volume, mount = jobs.entrypoint_volume("cm")
    working_dir = tmp_path / jobs.JOBS_DIR.strip("/")
    package = working_dir / Path(mount["mountPath"]).relative_to(jobs.JOBS_DIR)
    package.mkdir(parents=True)
    for key, text in data.items():
        (package / key).write_text(text)
    base = getattr(sys, "_base_executable", sys.executable)
    probe = subprocess.run([base, "-c", "import trtllm_jobs"], cwd=tmp_path,
                           capture_output=True, text=True, check=False,
                           env={"PATH": os.environ["PATH"]})
    assert probe.returncode != 0, "the base interpreter must not have trtllm_jobs installed"

    cache_root = tmp_path / "engines"
    cache_root.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(FAKE_SITE),
           "TRTLLM_TERMINATION_LOG": str(tmp_path / "termination-log"),
           "TRTLLM_DOWNLOAD_SPEC": json.dumps({
               "version": 1, "kind": "download",
               "model": {"source": "huggingFace", "repo": "org/model", "revision": "main"},
               "cacheRoot": str(cache_root)})}
    done = subprocess.run([base, *jobs.job_command("download")[1:]], cwd=working_dir, env=env,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "termination-log").read_text())
    assert summary["phase"] == "Downloaded"
    assert (Path(summary["path"]) / "model-manifest.json").is_file()
    assert volume["configMap"]["name"] == "cm"


def test_the_operator_takes_the_shared_facts_from_the_package() -> None:
    from trtllm_jobs import contract
    from trtllm_jobs import facts as job_facts
    from trtllm_operator import trtllm_facts

    assert jobs.PERMANENT_EXIT_CODES is contract.PERMANENT_EXIT_CODES
    assert trtllm_facts.fit_need_bytes is job_facts.fit_need_bytes
