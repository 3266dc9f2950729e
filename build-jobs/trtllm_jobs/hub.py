"""Hugging Face Hub access for every job kind: pin a revision to a commit, list its files and
sizes, download a snapshot, and turn the hub's errors into reasons.

``huggingface_hub`` ships in the TensorRT-LLM release images; it is imported lazily, only when a
job talks to the hub. The token comes from env ``HF_TOKEN`` and is passed as an argument, never
on a command line; the hub's own messages pass through the redactor.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

from .contract import SECRET_ENV, JobFailure, Reason
from .redaction import redact

WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".pt", ".pth")
HF_SKIPPED_WHEN_SAFETENSORS: Final = ("*.bin", "*.pt", "*.pth")
HF_ALWAYS_SKIPPED: Final = ("original/*", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot")
"""Hub files the converter never reads: Meta's original consolidated weights, TensorFlow, Flax,
ONNX and GGUF exports, and pickled duplicates of safetensors weights. Skipping them roughly
halves the download of a typical Llama repository."""

RETRYABLE_NAMES: Final = frozenset({
    "ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "TimeoutException",
    "TransportError", "ConnectError", "RemoteDisconnected", "ChunkedEncodingError",
    "ProtocolError", "IncompleteRead", "LocalEntryNotFoundError", "TimeoutError",
})
"""huggingface_hub / requests / httpx error classes (matched by name: the module layout moves
between releases) of a network problem that may pass."""


def weight_bytes(files: Iterable[tuple[str, int]]) -> int:
    """Bytes of the weights the converter reads: safetensors when present, else pickles."""
    weights = [(n, s) for n, s in files if n.endswith(WEIGHT_SUFFIXES)]
    safetensors = [(n, s) for n, s in weights if n.endswith(".safetensors")]
    return sum(s for _, s in (safetensors or weights))


def hub_bytes_at_16_bits(files: Sequence[tuple[str, int]], parameters: int | None) -> int:
    """A hub checkpoint's weights at 16 bits per parameter, before anything is downloaded: 2 x
    the parameter count when the hub reports one; else the safetensors' bytes (published in 16
    bits almost always); else half the pickles' bytes, since those are often float32 (gpt2-era
    repositories) and the fit check must not refuse what could fit."""
    if parameters:
        return 2 * parameters
    stored = weight_bytes(files)
    return stored if any(n.endswith(".safetensors") for n, _ in files) else stored // 2


def hub_ignore_patterns(filenames: Iterable[str]) -> tuple[str, ...]:
    names = list(filenames)
    if any(n.endswith(".safetensors") and not n.startswith("original/") for n in names):
        return HF_ALWAYS_SKIPPED + HF_SKIPPED_WHEN_SAFETENSORS
    return HF_ALWAYS_SKIPPED


def hub() -> ModuleType:
    """huggingface_hub, imported only when a checkpoint comes from the hub."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError as exc:
        raise JobFailure(Reason.DOWNLOAD_FAILED, f"huggingface_hub is not importable in this "
                         f"image ({exc}): use a TensorRT-LLM release image, or put the "
                         "checkpoint on a volume (spec.model.volume)") from None


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a hub error (``HfHubHTTPError.response``), if it has one."""
    code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """A rate limit (429), a timeout (408), a server error (5xx) or a network problem: worth
    trying again."""
    code = status_code(exc)
    if code is not None:
        return code in (408, 429) or code >= 500
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & RETRYABLE_NAMES)


def hub_failure(exc: Exception, repo: str, revision: str, *,
                access_reason: Reason = Reason.MODEL_NOT_FOUND,
                retry_note: str = "the Job retries once") -> JobFailure:
    """Map huggingface_hub's errors (by class name: its module layout moves between releases)
    to a reason: a missing or forbidden repo or revision cannot be fixed by retrying.
    ``access_reason`` is the reason for a gated repository or a refused token (401/403)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = redact(f"{type(exc).__name__}: {exc}")[:1500]
    if "GatedRepoError" in names:
        return JobFailure(access_reason, f"{repo} is gated: the token in "
                          "spec.model.huggingFace.tokenSecretRef must belong to an account "
                          "that accepted the model's license on huggingface.co", detail)
    if "RevisionNotFoundError" in names:
        return JobFailure(Reason.MODEL_NOT_FOUND, f"revision {revision!r} does not exist in "
                          f"{repo}: fix spec.model.huggingFace.revision", detail)
    if "RepositoryNotFoundError" in names:
        return JobFailure(Reason.MODEL_NOT_FOUND, f"{repo} does not exist on the Hugging Face "
                          "Hub or is private: fix spec.model.huggingFace.repo, or set "
                          "tokenSecretRef to a token that can read it", detail)
    if status_code(exc) in (401, 403):
        return JobFailure(access_reason, f"the Hugging Face Hub refused access to {repo} "
                          f"(HTTP {status_code(exc)}): check the token in "
                          "spec.model.huggingFace.tokenSecretRef (valid, with read access)",
                          detail)
    return JobFailure(Reason.DOWNLOAD_FAILED, f"could not reach the Hugging Face Hub for "
                      f"{repo}: a network or hub problem; {retry_note}", detail)


def hf_token() -> str | None:
    for key in SECRET_ENV:
        if os.environ.get(key, "").strip():
            return os.environ[key].strip()
    return None


class HubModel(NamedTuple):
    sha: str
    """The commit ``revision`` resolved to: pinning it makes the download consistent even if the
    branch moves meanwhile, and the manifest records it."""
    files: list[tuple[str, int]]
    """(file, bytes) of every file in the repository at that commit."""
    parameters: int | None
    """Parameter count of the safetensors weights, when the hub reports it."""
    lfs_sha256: Mapping[str, str] | None = None
    """sha256 of each LFS-stored file (the weights), as the hub lists it."""


def resolve_hub_model(repo: str, revision: str, token: str | None, repo_type: str = "model",
                      **failure: Any) -> HubModel:
    """Pin ``revision`` to a commit and list the files, without downloading anything (a
    dataset repo through ``dataset_info``). ``failure``: keyword arguments of
    :func:`hub_failure`."""
    api = hub().HfApi()
    info_of = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info = info_of(repo, revision=revision, token=token, files_metadata=True)
    except JobFailure:
        raise  # SIGTERM arrived meanwhile: Terminated, not a hub problem
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise hub_failure(exc, repo, revision, **failure) from exc
    except Exception as exc:
        raise hub_failure(exc, repo, revision, **failure) from exc
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not sha:
        raise JobFailure(Reason.DOWNLOAD_FAILED, f"the hub returned no commit for "
                         f"{repo}@{revision}")
    siblings = getattr(info, "siblings", None) or []
    files = [(str(s.rfilename), int(getattr(s, "size", None) or 0)) for s in siblings]
    lfs = {}
    for s in siblings:
        digest = getattr(getattr(s, "lfs", None), "sha256", None)
        if isinstance(digest, str) and digest:
            lfs[str(s.rfilename)] = digest
    # ModelInfo.safetensors.parameters: {"BF16": 8030261248, ...}, counted by the hub from the
    # safetensors headers; absent for repositories without safetensors weights.
    counts = getattr(getattr(info, "safetensors", None), "parameters", None)
    parameters = None
    if isinstance(counts, dict) and all(isinstance(n, int) for n in counts.values()):
        parameters = sum(counts.values()) or None
    return HubModel(sha, files, parameters, lfs)


def kept_files(model: HubModel) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """(ignore patterns, the (file, bytes) a download keeps)."""
    ignore = hub_ignore_patterns(n for n, _ in model.files)
    return ignore, [(n, s) for n, s in model.files if not any(fnmatch(n, p) for p in ignore)]


def download_hub_model(repo: str, sha: str, token: str | None, dest: Path,
                       ignore: Sequence[str], repo_type: str = "model",
                       allow: Sequence[str] = (), **failure: Any) -> Path:
    """Download ``repo`` at commit ``sha`` into ``dest`` (a dataset repo: only the files
    matching ``allow``, if given). ``failure``: keyword arguments of :func:`hub_failure`."""
    try:
        folder = hub().snapshot_download(repo_id=repo, repo_type=repo_type, revision=sha,
                                         token=token, local_dir=str(dest),
                                         allow_patterns=list(allow) or None,
                                         ignore_patterns=list(ignore))
    except JobFailure:
        raise  # SIGTERM arrived meanwhile: Terminated, not a hub problem
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise hub_failure(exc, repo, sha, **failure) from exc
    except Exception as exc:
        raise hub_failure(exc, repo, sha, **failure) from exc
    return Path(folder)
