"""The download-job entrypoint (``python3 -m trtllm_jobs.download``), run for real as a
subprocess against the stand-in ``huggingface_hub`` (build_job_standins/fake_site), which refuses
snapshot_download arguments that are not in build-jobs/trtllm_flags_1_3.json. No network."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from trtllm_jobs import cache, download, hub, reporting
from trtllm_jobs import contract as job_contract

REPO = Path(__file__).resolve().parents[2]
BUILD_JOBS = REPO / "build-jobs"
STANDINS = Path(__file__).resolve().parent / "build_job_standins"
sys.path.insert(0, str(STANDINS / "fake_site"))
try:
    import huggingface_hub as fake_hub  # the stand-in: its file table is the repo's content
finally:
    sys.path.remove(str(STANDINS / "fake_site"))
    sys.modules.pop("huggingface_hub", None)

MODEL = "meta-llama/Llama-3.1-8B"
SHA = fake_hub.SHA
TOKEN = "hf_FakeTokenValue0123456789abcdefXYZ"
KEPT = {name: data for name, data in fake_hub.FILES.items()
        if not any(fnmatch(name, p) for p in hub.hub_ignore_patterns(fake_hub.FILES))}
KEPT_BYTES = sum(len(d) for d in KEPT.values())
TABLE = json.loads((BUILD_JOBS / "trtllm_flags_1_3.json").read_text())


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any]
    summary_text: str
    hub_calls: list[dict[str, Any]] = field(default_factory=list)

    def calls(self) -> list[str]:
        return [c["call"] for c in self.hub_calls]

    def progress(self) -> list[dict[str, int]]:
        return [json.loads(line)["progress"] for line in self.stdout.splitlines()
                if line.startswith('{"progress"')]


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]

    @property
    def cache_root(self) -> Path:
        return self.root / "engines"

    @property
    def entry(self) -> Path:
        return self.cache_root / "models" / "meta-llama--Llama-3.1-8B" / SHA

    @property
    def hub_log(self) -> Path:
        return self.root / "hub.jsonl"

    @property
    def termination_log(self) -> Path:
        return self.root / "termination-log"

    def spec(self, **changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "version": 1, "kind": "download",
            "model": {"source": "huggingFace", "repo": MODEL, "revision": "main"},
            "cacheRoot": str(self.cache_root),
        }
        spec.update(changes)
        return spec

    def popen(self, spec: dict[str, Any] | None = None, **env: str) -> subprocess.Popen[str]:
        environ = dict(self.env)
        environ["TRTLLM_DOWNLOAD_SPEC"] = json.dumps(self.spec() if spec is None else spec)
        environ.update(env)
        self.termination_log.unlink(missing_ok=True)
        self.hub_log.unlink(missing_ok=True)
        return subprocess.Popen([sys.executable, "-m", "trtllm_jobs.download"], env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> Run:
        stdout, stderr = proc.communicate(timeout=timeout)
        text = self.termination_log.read_text() if self.termination_log.exists() else ""
        calls = ([json.loads(line) for line in self.hub_log.read_text().splitlines()]
                 if self.hub_log.exists() else [])
        return Run(proc.returncode, stdout, stderr, json.loads(text) if text else {}, text,
                   calls)

    def run(self, spec: dict[str, Any] | None = None, **env: str) -> Run:
        return self.finish(self.popen(spec, **env))

    def siblings(self) -> list[str]:
        parent = self.entry.parent
        return sorted(p.name for p in parent.iterdir() if p != self.entry) if parent.exists() \
            else []


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    (tmp_path / "engines").mkdir()
    return Sandbox(tmp_path, {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "PYTHONPATH": os.pathsep.join([str(BUILD_JOBS), str(STANDINS / "fake_site")]),
        "HOME": str(tmp_path),
        "TRTLLM_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "FAKE_HF_LOG": str(tmp_path / "hub.jsonl"),
        "TRTLLM_PROGRESS_SECONDS": "0.05",
        "TRTLLM_RETRY_BACKOFF_SECONDS": "0",
        "NODE_NAME": "cpu-node-1",
        "POD_NAME": "trtllm-download-abc-x1",
        "JOB_NAME": "trtllm-download-abc",
    })


def assert_downloaded(box: Sandbox, run: Run) -> dict[str, Any]:
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.summary["phase"] == "Downloaded", run.summary
    assert box.siblings() == []  # no staging or stale folder left
    manifest: dict[str, Any] = json.loads((box.entry / cache.MANIFEST_NAME).read_text())
    return manifest


def assert_failed(run: Run, reason: str, code: int) -> None:
    assert run.summary.get("reason") == reason, (run.summary, run.stdout[-3000:],
                                                 run.stderr[-3000:])
    assert run.summary["phase"] == "Failed"
    assert run.returncode == code


# --------------------------------------------------------------------------- success


def test_a_download_publishes_one_entry_per_repo_and_commit_with_a_manifest(
        box: Sandbox) -> None:
    run = box.run(HF_TOKEN=TOKEN, FAKE_HF_EXPECTED_TOKEN=TOKEN,
                  FAKE_HF_PARAMETERS="BF16=8030261248")
    manifest = assert_downloaded(box, run)

    # <root>/models/<org>--<name>/<commit>/: the files the converters read, nothing else.
    on_disk = sorted(p.relative_to(box.entry).as_posix() for p in box.entry.rglob("*")
                     if p.is_file())
    assert on_disk == sorted([*KEPT, cache.MANIFEST_NAME])
    assert not (box.entry / ".cache").exists()  # the hub's resume bookkeeping stays out
    assert {"pytorch_model.bin", "original/consolidated.00.pth"}.isdisjoint(on_disk)

    assert manifest["schemaVersion"] == 1
    assert (manifest["repo"], manifest["revision"], manifest["commit"]) == (MODEL, "main", SHA)
    assert manifest["checkpointBytes"] == 2 * 8030261248  # the hub's count, at 16 bits
    assert manifest["totalBytes"] == KEPT_BYTES
    assert manifest["node"] == "cpu-node-1"
    assert manifest["startedAt"] <= manifest["finishedAt"]
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == set(KEPT)
    for name, data in KEPT.items():
        assert files[name]["bytes"] == len(data)
        assert files[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert cache.read_entry(box.entry, MODEL, SHA)[0] == manifest

    assert run.summary["commit"] == SHA
    assert run.summary["path"] == str(box.entry)
    assert run.summary["totalBytes"] == KEPT_BYTES
    assert run.summary["checkpointBytes"] == 2 * 8030261248
    assert len(run.summary_text.encode()) <= 4096

    # The revision is resolved first; the download is pinned to that commit.
    assert run.calls() == ["model_info", "snapshot_download"]
    info, snap = run.hub_calls
    assert info["revision"] == "main"
    assert snap["revision"] == SHA
    assert set(snap["arguments"]) <= set(TABLE["hf_download"]["python_api"]["arguments"])
    assert all(c["token_ok"] for c in run.hub_calls)
    # ...and the token, which the stand-in prints, is shown nowhere.
    for text in (run.stdout, run.stderr, run.summary_text, json.dumps(manifest)):
        assert TOKEN not in text


def test_progress_is_one_json_line_per_interval_ending_at_the_total(box: Sandbox) -> None:
    run = box.run(FAKE_HF_SECONDS_PER_FILE="0.05")
    assert_downloaded(box, run)

    progress = run.progress()
    assert len(progress) >= 2  # the first line at the start, the last at the end
    assert all(p["totalBytes"] == KEPT_BYTES for p in progress)
    done = [p["doneBytes"] for p in progress]
    assert all(0 <= d <= KEPT_BYTES for d in done)
    assert done[-1] == KEPT_BYTES
    assert done == sorted(done)
    # What the operator will read from the pod log, with the package's own parser.
    assert reporting.last_progress(run.stdout) == (KEPT_BYTES, KEPT_BYTES)
    assert reporting.last_progress('no progress yet\n{"progress": {"doneBytes": "x"}}') is None


def test_the_checkpoint_size_without_a_hub_count_comes_from_the_safetensors(
        box: Sandbox) -> None:
    manifest = assert_downloaded(box, box.run())

    assert manifest["checkpointBytes"] == hub.hub_bytes_at_16_bits(
        [(n, len(d)) for n, d in KEPT.items()], None)
    assert manifest["checkpointBytes"] == sum(
        len(d) for n, d in KEPT.items() if n.endswith(".safetensors"))


# --------------------------------------------------------------------------- the cache


def test_an_existing_entry_is_a_cache_hit_without_a_download(box: Sandbox) -> None:
    first = assert_downloaded(box, box.run())

    run = box.run()
    assert run.returncode == 0
    assert run.summary["phase"] == "CacheHit"
    assert "already cached" in run.summary["message"]
    assert run.calls() == ["model_info"]  # "main" had to be resolved; nothing downloaded
    assert json.loads((box.entry / cache.MANIFEST_NAME).read_text()) == first


def test_a_pinned_commit_that_is_cached_needs_no_hub_at_all(box: Sandbox) -> None:
    assert_downloaded(box, box.run())
    pinned = box.spec(model={"source": "huggingFace", "repo": MODEL, "revision": SHA})

    run = box.run(pinned, FAKE_HF_FORBIDDEN="1")

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.summary["phase"] == "CacheHit"
    assert run.summary["commit"] == SHA
    assert run.hub_calls == []


@pytest.mark.parametrize("damage", ["no-manifest", "short-file", "other-repo"])
def test_a_damaged_entry_is_replaced_not_trusted(box: Sandbox, damage: str) -> None:
    assert_downloaded(box, box.run())
    manifest_path = box.entry / cache.MANIFEST_NAME
    if damage == "no-manifest":
        manifest_path.unlink()
    elif damage == "short-file":
        (box.entry / "model-00002-of-00002.safetensors").write_bytes(b"t")
    else:
        data = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps(data | {"repo": "someone/else"}))

    run = box.run()

    manifest = assert_downloaded(box, run)
    assert run.calls() == ["model_info", "snapshot_download"]
    assert manifest["repo"] == MODEL
    assert (box.entry / "model-00002-of-00002.safetensors").read_bytes() == KEPT[
        "model-00002-of-00002.safetensors"]


# --------------------------------------------------------------------------- resumption


def _partial_staging(folder: Path, age_seconds: float) -> None:
    """What a pod killed mid-download leaves: some complete files, resume bookkeeping."""
    for name in ("config.json", "model-00001-of-00002.safetensors"):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(KEPT[name])
    partial = folder / ".cache" / "huggingface" / "download" / "x.incomplete"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"t" * 100)
    stamp = time.time() - age_seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (stamp, stamp))


def test_a_dead_pods_staging_folder_is_taken_over_and_resumed(box: Sandbox) -> None:
    dead = box.entry.with_name(f"{SHA}.staging-trtllm-download-old")
    _partial_staging(dead, age_seconds=3600)

    run = box.run()

    manifest = assert_downloaded(box, run)
    assert not dead.exists()
    (snap,) = [c for c in run.hub_calls if c["call"] == "snapshot_download"]
    assert sorted(snap["kept"]) == ["config.json", "model-00001-of-00002.safetensors"]
    assert "config.json" not in snap["written"]
    assert f"resuming the download left in {dead.name}" in run.stdout
    assert {f["path"] for f in manifest["files"]} == set(KEPT)


def test_a_live_download_of_another_pod_is_left_alone(box: Sandbox) -> None:
    live = box.entry.with_name(f"{SHA}.staging-trtllm-download-other")
    _partial_staging(live, age_seconds=0)

    run = box.run()

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.summary["phase"] == "Downloaded"
    assert live.is_dir()  # not adopted, not removed: it is still being written
    assert box.entry.is_dir()


def test_a_killed_download_publishes_nothing_and_the_jobs_next_pod_resumes(
        box: Sandbox) -> None:
    proc = box.popen(FAKE_HF_SECONDS_PER_FILE="1")
    staging = box.entry.with_name(f"{SHA}.staging-trtllm-download-abc")
    deadline = time.monotonic() + 30
    while not (staging / "config.json").is_file():
        assert time.monotonic() < deadline, "the download never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the node died, the OOM killer struck: no cleanup
    proc.wait(timeout=30)

    assert not box.entry.exists()  # never half-written
    assert staging.is_dir()

    run = box.run(POD_NAME="trtllm-download-abc-x2")  # the Job's replacement pod

    manifest = assert_downloaded(box, run)
    (snap,) = [c for c in run.hub_calls if c["call"] == "snapshot_download"]
    assert "config.json" in snap["kept"]
    assert "(an earlier pod of this Job)" in run.stdout
    assert {f["path"] for f in manifest["files"]} == set(KEPT)


def test_sigterm_reports_terminated_and_keeps_the_staging_folder_for_the_retry(
        box: Sandbox) -> None:
    proc = box.popen(FAKE_HF_SECONDS_PER_FILE="1")
    staging = box.entry.with_name(f"{SHA}.staging-trtllm-download-abc")
    deadline = time.monotonic() + 30
    while not (staging / "config.json").is_file():
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    run = box.finish(proc)

    assert_failed(run, "Terminated", 1)
    assert not box.entry.exists()
    assert staging.is_dir()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("mode", "reason", "code", "words"), [
    ("gated", "ModelAccessDenied", 8, "is gated"),
    ("denied", "ModelAccessDenied", 8, "HTTP 401"),
    ("missing", "ModelNotFound", 6, "does not exist on the Hugging Face Hub or is private"),
    ("norevision", "ModelNotFound", 6, "revision 'main' does not exist"),
    ("ratelimit", "DownloadFailed", 1, "gave up after 4 attempts"),
    ("unavailable", "DownloadFailed", 1, "gave up after 4 attempts"),
    ("offline", "DownloadFailed", 1, "gave up after 4 attempts"),
])
def test_hub_failures_map_to_reasons(box: Sandbox, mode: str, reason: str, code: int,
                                     words: str) -> None:
    run = box.run(FAKE_HF_MODE=mode, HF_TOKEN=TOKEN)

    assert_failed(run, reason, code)
    assert words in run.summary["message"]
    assert not box.entry.exists()
    failed = [c for c in run.hub_calls if c.get("failed")]
    # Rate limits, server errors and network trouble are retried in the job; the rest not.
    assert len(failed) == (download.RETRY_ATTEMPTS if code == 1 else 1)
    assert TOKEN not in run.stdout + run.stderr + run.summary_text
    assert code == job_contract.exit_code(job_contract.Reason(reason))


def test_a_rate_limit_that_passes_is_retried_then_downloads(box: Sandbox) -> None:
    run = box.run(FAKE_HF_MODE="ratelimit", FAKE_HF_FAIL_CALLS="2")

    assert_downloaded(box, run)
    assert [c["call"] for c in run.hub_calls if c.get("failed")] == ["model_info"] * 2
    assert run.stdout.count("HTTP 429); retrying") == 2


def test_a_server_error_during_the_download_keeps_what_arrived_for_the_retry(
        box: Sandbox) -> None:
    run = box.run(FAKE_HF_MODE="unavailable", FAKE_HF_FAIL_AT="snapshot_download",
                  FAKE_HF_FAIL_AFTER_FILES="2")

    assert_failed(run, "DownloadFailed", 1)
    assert "the Job retries and resumes" in run.summary["message"]
    assert not box.entry.exists()
    staging = box.entry.with_name(f"{SHA}.staging-trtllm-download-abc")
    assert box.siblings() == [staging.name]
    assert (staging / "config.json").read_bytes() == KEPT["config.json"]

    again = box.run(POD_NAME="trtllm-download-abc-x2")  # the hub is back

    assert_downloaded(box, again)
    (snap,) = [c for c in again.hub_calls if c["call"] == "snapshot_download"]
    assert "config.json" in snap["kept"]


def test_a_full_disk_while_downloading_is_disk_full_and_leaves_nothing(box: Sandbox) -> None:
    run = box.run(FAKE_HF_MODE="diskfull")

    assert_failed(run, "DiskFull", 5)
    assert "no space left on device" in run.summary["message"]
    assert not box.entry.exists()
    assert box.siblings() == []


def test_too_little_free_space_is_refused_before_downloading(box: Sandbox) -> None:
    run = box.run(TRTLLM_BUILD_FREE_BYTES="1000")

    assert_failed(run, "DiskFull", 5)
    assert run.calls() == ["model_info"]
    assert box.siblings() == []


def test_a_weight_file_that_does_not_match_the_hubs_sha256_is_never_published(
        box: Sandbox) -> None:
    run = box.run(FAKE_HF_MODE="corrupt")

    assert_failed(run, "DownloadFailed", 1)
    assert "does not match the hub's sha256" in run.summary["message"]
    assert not box.entry.exists()


def test_offline_mode_with_an_uncached_model_is_refused_without_the_hub(box: Sandbox) -> None:
    run = box.run(HF_HUB_OFFLINE="1", FAKE_HF_FORBIDDEN="1")

    assert_failed(run, "ModelNotFound", 6)
    assert "HF_HUB_OFFLINE" in run.summary["message"]
    assert run.hub_calls == []


@pytest.mark.parametrize(("change", "field"), [
    ({"kind": "build"}, "kind"),
    ({"version": 2}, "version"),
    ({"extra": 1}, "extra"),
    ({"cacheRoot": "relative/path"}, "cacheRoot"),
    ({"model": {"source": "volume", "path": "/models/x"}}, "model.source"),
    ({"model": {"source": "huggingFace", "repo": "bad repo!"}}, "model.repo"),
    ({"model": {"source": "huggingFace", "repo": MODEL, "cachedPath": "/x"}},
     "model.cachedPath"),
])
def test_an_invalid_spec_is_refused_naming_the_field(box: Sandbox, change: dict[str, Any],
                                                     field: str) -> None:
    run = box.run(box.spec(**change), FAKE_HF_FORBIDDEN="1")

    assert_failed(run, "InvalidSpec", 2)
    assert f"download spec field {field}:" in run.summary["message"]
    assert run.hub_calls == []
    assert not (box.cache_root / "models").exists()


def test_layout_helpers_agree_with_the_documented_layout(tmp_path: Path) -> None:
    assert cache.entry_dir(tmp_path, "org/name", "c" * 40) == (
        tmp_path / "models" / "org--name" / ("c" * 40))
    assert cache.entry_dir(tmp_path, "gpt2", "c" * 40) == tmp_path / "models" / "gpt2" / (
        "c" * 40)


# --------------------------------------------------------------------------- datasets


def test_a_dataset_repo_is_fetched_only_as_far_as_its_files_into_the_datasets_cache(
        box: Sandbox) -> None:
    files = ["data/validation.*"]
    spec = box.spec(repoType="dataset", files=files,
                    model={"source": "huggingFace", "repo": "abisee/cnn_dailymail",
                           "revision": "main"})

    run = box.run(spec)

    entry = cache.dataset_entry_dir(box.cache_root, "abisee/cnn_dailymail", SHA, files)
    assert entry.parent == box.cache_root / "datasets" / "abisee--cnn_dailymail"
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.summary["phase"] == "Downloaded"
    assert run.summary["path"] == str(entry)
    on_disk = sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())
    assert on_disk == ["data/validation.jsonl", cache.MANIFEST_NAME]
    manifest, why = cache.read_entry(entry, "abisee/cnn_dailymail", SHA, "dataset")
    assert manifest is not None, why
    assert (manifest["repoType"], manifest["allowPatterns"]) == ("dataset", files)
    assert manifest["checkpointBytes"] is None
    # A model entry is not a dataset entry, nor the other way round.
    assert cache.read_entry(entry, "abisee/cnn_dailymail", SHA)[0] is None
    assert run.calls() == ["dataset_info", "snapshot_download"]
    snap = run.hub_calls[1]
    assert set(snap["arguments"]) <= set(TABLE["hf_download"]["python_api"]["arguments"])
    assert {"repo_type", "allow_patterns"} <= set(snap["arguments"])

    again = box.run(spec)
    assert again.summary["phase"] == "CacheHit"
    assert again.calls() == ["dataset_info"]


def test_a_dataset_selection_that_matches_nothing_is_refused_naming_the_files(
        box: Sandbox) -> None:
    spec = box.spec(repoType="dataset", files=["3.0.0/train-*.parquet"],
                    model={"source": "huggingFace", "repo": "abisee/cnn_dailymail",
                           "revision": "main"})

    run = box.run(spec)

    assert_failed(run, "ModelNotFound", 6)
    assert "3.0.0/train-*.parquet" in run.summary["message"]
    assert "data/train.jsonl" in run.summary["message"]
    assert "calibration.files" in run.summary["message"]


@pytest.mark.parametrize(("change", "field"), [
    ({"files": ["*.json"]}, "files"),  # a model download takes no file subset
    ({"repoType": "dataset", "files": ["../etc/*"]}, "files"),
    ({"repoType": "space"}, "repoType"),
])
def test_dataset_fields_are_checked(box: Sandbox, change: dict[str, Any], field: str) -> None:
    run = box.run(box.spec(**change))
    assert_failed(run, "InvalidSpec", 2)
    assert f"download spec field {field}:" in run.summary["message"]
