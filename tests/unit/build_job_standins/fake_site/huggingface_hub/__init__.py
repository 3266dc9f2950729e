"""Fake huggingface_hub: HfApi.model_info and snapshot_download against an in-memory repo, so
tests of the Hugging Face path never touch the network.

A dataset repo (``dataset_info``, ``snapshot_download(repo_type="dataset")``) holds
DATASET_FILES.

FAKE_HF_MODE: ok (default) | missing (RepositoryNotFoundError) | gated (GatedRepoError) |
offline (a connection error) | norevision (RevisionNotFoundError) | denied (HTTP 401) |
ratelimit (HTTP 429) | unavailable (HTTP 503) | diskfull (ENOSPC while writing) | corrupt (a
weight file arrives with other bytes than the hub's sha256 says). FAKE_HF_FAIL_CALLS limits the
failure to the first N calls (then the hub answers), FAKE_HF_FAIL_AT names the call that fails
(model_info or snapshot_download; default both); FAKE_HF_FAIL_AFTER_FILES=N lets
snapshot_download write N files before it fails. FAKE_HF_SECONDS_PER_FILE slows the download.
FAKE_HF_FORBIDDEN makes every call fail (and records it): for callers that must not touch the
hub. FAKE_HF_LISTED_SHARD_BYTES makes the listing claim that size for each safetensors shard (a
big model without big files; downloads still write the small contents), FAKE_HF_PARAMETERS
("BF16=8030261248,F32=1") is what the hub reports in ModelInfo.safetensors.parameters (absent
when unset, as for a repo without safetensors).
snapshot_download refuses a keyword argument that is not in the project's flag table
(build-jobs/trtllm_flags_1_3.json, hf_download.python_api) and, like the real one with a
local_dir, keeps files already complete there and records them as ``kept``.
Calls are appended to FAKE_HF_LOG as JSON lines; whether the token matched
FAKE_HF_EXPECTED_TOKEN is recorded, never the token itself. Like a careless library, the fake
does print the token and put it in error messages: the jobs must redact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SHA = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"

FILES: dict[str, bytes] = {
    "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                               "num_hidden_layers": 2}).encode(),
    "model-00001-of-00002.safetensors": b"s" * 4096,
    "model-00002-of-00002.safetensors": b"t" * 2048,
    "model.safetensors.index.json": b"{}",
    "pytorch_model.bin": b"p" * 8192,
    "original/consolidated.00.pth": b"o" * 8192,
    "original/params.json": b"{}",
    "tokenizer.json": b'{"model": "fake"}',
    "tokenizer_config.json": b'{"chat_template": "fake"}',
    "special_tokens_map.json": b"{}",
    "generation_config.json": b'{"temperature": 0.6}',
    "README.md": b"# fake",
}

DATASET_FILES: dict[str, bytes] = {
    "data/train.jsonl": b"".join(json.dumps({"text": f"train sample {i}"}).encode() + b"\n"
                                 for i in range(8)),
    "data/validation.jsonl": b"".join(
        json.dumps({"article": f"validation article {i}"}).encode() + b"\n" for i in range(4)),
    "README.md": b"# fake dataset",
}
"""A dataset repo (``repo_type="dataset"``): what dataset_info lists and snapshot_download
writes for it."""


TABLE = Path(__file__).resolve().parents[5] / "build-jobs" / "trtllm_flags_1_3.json"
SNAPSHOT_ARGUMENTS = frozenset(
    json.loads(TABLE.read_text())["hf_download"]["python_api"]["arguments"])


class HfHubHTTPError(Exception):
    def __init__(self, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = (SimpleNamespace(status_code=status, headers=headers or {})
                         if status is not None else None)


class RepositoryNotFoundError(HfHubHTTPError):
    pass


class GatedRepoError(RepositoryNotFoundError):
    pass


class RevisionNotFoundError(HfHubHTTPError):
    pass


class EntryNotFoundError(HfHubHTTPError):
    pass


def _record(call: str, token: str | None, **fields: Any) -> None:
    log = os.environ.get("FAKE_HF_LOG")
    if log:
        fields |= {"call": call,
                   "token_ok": token == os.environ.get("FAKE_HF_EXPECTED_TOKEN")}
        with open(log, "a") as handle:
            handle.write(json.dumps(fields) + "\n")


def _failures_so_far() -> int:
    log = os.environ.get("FAKE_HF_LOG")
    if not log or not os.path.exists(log):
        return 0
    with open(log) as handle:
        return sum(1 for line in handle if json.loads(line).get("failed"))


def _fail_if_asked(repo_id: str, token: str | None, call: str = "") -> None:
    if os.environ.get("FAKE_HF_FORBIDDEN"):
        # The caller promised not to touch the hub (e.g. a build from the model cache).
        _record(call, token, repo_id=repo_id, forbidden=True)
        raise RuntimeError(f"huggingface_hub.{call} called although FAKE_HF_FORBIDDEN is set")
    mode = os.environ.get("FAKE_HF_MODE", "ok")
    if mode in ("ok", "diskfull", "corrupt"):
        return
    at = os.environ.get("FAKE_HF_FAIL_AT")
    if at and at != call:
        return
    limit = os.environ.get("FAKE_HF_FAIL_CALLS")
    if limit is not None and _failures_so_far() >= int(limit):
        return
    _record(call, token, repo_id=repo_id, failed=mode)
    if mode == "norevision":
        raise RevisionNotFoundError(f"404 Client Error: Revision Not Found for {repo_id}",
                                    404)
    if mode == "denied":
        raise HfHubHTTPError(f"401 Client Error: Unauthorized (sent token {token})", 401)
    if mode == "ratelimit":
        raise HfHubHTTPError("429 Client Error: Too Many Requests", 429, {"Retry-After": "0"})
    if mode == "unavailable":
        raise HfHubHTTPError("503 Server Error: Service Unavailable", 503)
    if mode == "missing":
        raise RepositoryNotFoundError(f"401 Client Error: Repository Not Found for url: "
                                      f"https://huggingface.co/api/models/{repo_id} "
                                      f"(sent token {token})")
    if mode == "gated":
        raise GatedRepoError(f"403 Client Error: access to {repo_id} is restricted")
    if mode == "offline":
        raise ConnectionError("Max retries exceeded with url: /api/models (Connection refused)")


class HfApi:
    def dataset_info(self, repo_id: str, *, revision: str | None = None,
                     token: str | None = None, files_metadata: bool = False,
                     **kwargs: Any) -> SimpleNamespace:
        _fail_if_asked(repo_id, token, "dataset_info")
        _record("dataset_info", token, repo_id=repo_id, revision=revision,
                files_metadata=files_metadata)
        siblings = [SimpleNamespace(rfilename=name, size=len(data) if files_metadata else None,
                                    lfs=None) for name, data in DATASET_FILES.items()]
        return SimpleNamespace(id=repo_id, sha=SHA, siblings=siblings)

    def model_info(self, repo_id: str, *, revision: str | None = None,
                   token: str | None = None, files_metadata: bool = False,
                   **kwargs: Any) -> SimpleNamespace:
        _fail_if_asked(repo_id, token, "model_info")
        _record("model_info", token, repo_id=repo_id, revision=revision,
                files_metadata=files_metadata)
        print(f"fake hub: request authorized with {token}", file=sys.stderr)
        shard = os.environ.get("FAKE_HF_LISTED_SHARD_BYTES")

        def size(name: str, data: bytes) -> int | None:
            if not files_metadata:
                return None
            if shard and name.endswith(".safetensors") and not name.startswith("original/"):
                return int(shard)
            return len(data)

        def lfs(name: str, data: bytes) -> SimpleNamespace | None:
            if not files_metadata or not name.endswith((".safetensors", ".bin", ".pth")):
                return None
            return SimpleNamespace(sha256=hashlib.sha256(data).hexdigest(), size=len(data))

        siblings = [SimpleNamespace(rfilename=name, size=size(name, data), lfs=lfs(name, data))
                    for name, data in FILES.items()]
        safetensors = None
        if params := os.environ.get("FAKE_HF_PARAMETERS"):
            counts = dict(item.split("=") for item in params.split(","))
            safetensors = SimpleNamespace(parameters={k: int(v) for k, v in counts.items()},
                                          total=sum(int(v) for v in counts.values()))
        return SimpleNamespace(id=repo_id, sha=SHA, siblings=siblings, safetensors=safetensors)


def snapshot_download(repo_id: str, *, revision: str | None = None, token: str | None = None,
                      local_dir: str | None = None, ignore_patterns: list[str] | None = None,
                      **kwargs: Any) -> str:
    unknown = set(kwargs) - SNAPSHOT_ARGUMENTS
    if unknown:
        raise TypeError(f"snapshot_download() got unexpected keyword arguments {sorted(unknown)}"
                        f" (not in {TABLE.name})")
    fail_after = os.environ.get("FAKE_HF_FAIL_AFTER_FILES")
    if fail_after is None:
        _fail_if_asked(repo_id, token, "snapshot_download")
    if revision != SHA:
        raise RevisionNotFoundError(f"revision {revision} not pinned to the resolved commit")
    assert local_dir is not None
    mode = os.environ.get("FAKE_HF_MODE", "ok")
    pause = float(os.environ.get("FAKE_HF_SECONDS_PER_FILE") or 0)
    written, kept = [], []
    repo_files = DATASET_FILES if kwargs.get("repo_type") == "dataset" else FILES
    allow = kwargs.get("allow_patterns")
    for name, data in repo_files.items():
        if any(fnmatch(name, pattern) for pattern in ignore_patterns or []):
            continue
        if allow and not any(fnmatch(name, pattern) for pattern in allow):
            continue
        path = Path(local_dir) / name
        if path.is_file() and path.read_bytes() == data:
            kept.append(name)  # already complete in local_dir: not fetched again
            continue
        if fail_after is not None and len(written) >= int(fail_after):
            _fail_if_asked(repo_id, token, "snapshot_download")
        if mode == "diskfull" and name.endswith(".safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        if mode == "corrupt" and name.endswith(".safetensors"):
            data = b"x" * len(data)
        # Like the real one: a partial file and resume metadata under local_dir/.cache.
        meta = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{name}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"{SHA}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(name)
        time.sleep(pause)
    _record("snapshot_download", token, repo_id=repo_id, revision=revision,
            local_dir=local_dir, ignore_patterns=ignore_patterns, written=written, kept=kept,
            arguments=sorted(["repo_id", "revision", "token", "local_dir", "ignore_patterns",
                              *kwargs]))
    return local_dir
