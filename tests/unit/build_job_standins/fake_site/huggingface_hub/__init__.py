"""Fake huggingface_hub: HfApi.model_info and snapshot_download against an in-memory repo, so
tests of the Hugging Face path never touch the network.

FAKE_HF_MODE: ok (default) | missing (RepositoryNotFoundError) | gated (GatedRepoError) |
offline (a connection error). FAKE_HF_LISTED_SHARD_BYTES makes the listing claim that size for
each safetensors shard (a big model without big files; downloads still write the small
contents), FAKE_HF_PARAMETERS ("BF16=8030261248,F32=1") is what the hub reports in
ModelInfo.safetensors.parameters (absent when unset, as for a repo without safetensors).
Calls are appended to FAKE_HF_LOG as JSON lines; whether the token matched
FAKE_HF_EXPECTED_TOKEN is recorded, never the token itself. Like a careless library, the fake
does print the token and put it in error messages: the build job must redact.
"""

from __future__ import annotations

import json
import os
import sys
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


class HfHubHTTPError(Exception):
    pass


class RepositoryNotFoundError(HfHubHTTPError):
    pass


class GatedRepoError(RepositoryNotFoundError):
    pass


class RevisionNotFoundError(HfHubHTTPError):
    pass


def _record(call: str, token: str | None, **fields: Any) -> None:
    log = os.environ.get("FAKE_HF_LOG")
    if log:
        fields |= {"call": call,
                   "token_ok": token == os.environ.get("FAKE_HF_EXPECTED_TOKEN")}
        with open(log, "a") as handle:
            handle.write(json.dumps(fields) + "\n")


def _fail_if_asked(repo_id: str, token: str | None) -> None:
    mode = os.environ.get("FAKE_HF_MODE", "ok")
    if mode == "missing":
        raise RepositoryNotFoundError(f"401 Client Error: Repository Not Found for url: "
                                      f"https://huggingface.co/api/models/{repo_id} "
                                      f"(sent token {token})")
    if mode == "gated":
        raise GatedRepoError(f"403 Client Error: access to {repo_id} is restricted")
    if mode == "offline":
        raise ConnectionError("Max retries exceeded with url: /api/models (Connection refused)")


class HfApi:
    def model_info(self, repo_id: str, *, revision: str | None = None,
                   token: str | None = None, files_metadata: bool = False,
                   **kwargs: Any) -> SimpleNamespace:
        _record("model_info", token, repo_id=repo_id, revision=revision,
                files_metadata=files_metadata)
        _fail_if_asked(repo_id, token)
        print(f"fake hub: request authorized with {token}", file=sys.stderr)
        shard = os.environ.get("FAKE_HF_LISTED_SHARD_BYTES")

        def size(name: str, data: bytes) -> int | None:
            if not files_metadata:
                return None
            if shard and name.endswith(".safetensors") and not name.startswith("original/"):
                return int(shard)
            return len(data)

        siblings = [SimpleNamespace(rfilename=name, size=size(name, data))
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
    _fail_if_asked(repo_id, token)
    if revision != SHA:
        raise RevisionNotFoundError(f"revision {revision} not pinned to the resolved commit")
    assert local_dir is not None
    written = []
    for name, data in FILES.items():
        if any(fnmatch(name, pattern) for pattern in ignore_patterns or []):
            continue
        path = Path(local_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(name)
    _record("snapshot_download", token, repo_id=repo_id, revision=revision,
            local_dir=local_dir, ignore_patterns=ignore_patterns, written=written)
    return local_dir
