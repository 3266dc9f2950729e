"""The model cache: one folder per (Hugging Face repo, resolved commit) on the shared volume.

Layout (``root`` is the shared volume's mount, the engines volume)::

    <root>/models/<org>--<name>/<commit>/                 a published entry (never half-written)
    <root>/models/<org>--<name>/<commit>/model-manifest.json
    <root>/models/<org>--<name>/<commit>.staging-<pod>/   a download in progress (or a dead one)
    <root>/datasets/<org>--<name>/<commit>[-<files>]/     a dataset repo (calibration samples)

The download job (``trtllm_jobs.download``) writes entries; the build job (and the serving and
quantize pods, later) only reads them. An entry is valid when its manifest has this schema,
names the repo and commit, and every file it lists is present with its recorded size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from .publish import read_manifest

MANIFEST_NAME: Final = "model-manifest.json"
MANIFEST_SCHEMA_VERSION: Final = 1


def model_dir(root: Path, repo: str) -> Path:
    """``<root>/models/<org>--<name>``: a repo id holds at most one '/', which becomes '--'
    (repo names may not contain '--' twice in a row at the start, so it cannot collide)."""
    return root / "models" / repo.replace("/", "--")


def entry_dir(root: Path, repo: str, commit: str) -> Path:
    return model_dir(root, repo) / commit


def quantized_dir(root: Path, repo: str, commit: str, fmt: str, kv_cache_dtype: str | None,
                  calibration: str | None = None) -> Path:
    """``<root>/quantized/<org>--<name>/<commit>/<format>[-kv<kvdtype>][-cal<key>]``: one
    ModelOpt export per model, commit, format and calibration (its scales depend on the
    samples), shared by every target whose GPU runs the format. ``calibration`` is
    :func:`calibration_key` of the calibration settings."""
    leaf = fmt + (f"-kv{kv_cache_dtype}" if kv_cache_dtype else "") + (
        f"-cal{calibration}" if calibration else "")
    return root / "quantized" / repo.replace("/", "--") / commit / leaf


def calibration_key(settings: Mapping[str, Any]) -> str:
    """10 hex digits of sha256 over the calibration settings as canonical JSON: the quantize
    job and the operator compute it from the same parsed spec, so they name the same folder."""
    canonical = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def files_key(files: Sequence[str]) -> str:
    """10 hex digits naming a subset of a dataset repo's files (its allow patterns)."""
    return hashlib.sha256("\0".join(sorted(files)).encode()).hexdigest()[:10]


def dataset_entry_dir(root: Path, repo: str, commit: str, files: Sequence[str] = ()) -> Path:
    """``<root>/datasets/<org>--<name>/<commit>[-<files key>]``: a Hugging Face dataset repo
    (calibration samples) at one commit, whole or only the files matching ``files``."""
    leaf = commit + (f"-{files_key(files)}" if files else "")
    return root / "datasets" / repo.replace("/", "--") / leaf


def read_entry(folder: Path, repo: str, commit: str | None = None,
               repo_type: str = "model") -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` is a complete cache entry of ``repo`` (at ``commit`` when
    given), else (None, why not). A model's manifest also holds its size at 16 bits."""
    expect: dict[str, Any] = {"repo": repo}
    if commit is not None:
        expect["commit"] = commit
    if repo_type != "model":
        expect["repoType"] = repo_type
    manifest, why = read_manifest(folder, MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, expect)
    if manifest is None:
        return None, why
    if repo_type == "model" and (not isinstance(manifest.get("checkpointBytes"), int)
                                 or manifest["checkpointBytes"] < 0):
        return None, "manifest has no checkpointBytes"
    if not isinstance(manifest.get("commit"), str):
        return None, "manifest has no commit"
    return manifest, ""
