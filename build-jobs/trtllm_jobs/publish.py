"""Publishing into the shared volume, never half-written.

Every job writes its artifact into a staging folder beside the final path (same filesystem),
lists every file with its size and sha256 in a manifest, fsyncs the lot and renames the
staging folder into place in one step. A folder at the final path without a valid manifest is
no artifact: it is renamed aside and removed. Staging folders left by pods that died are swept
(or, for downloads, adopted and resumed).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .contract import ENV_FREE_BYTES, JobFailure, Reason
from .reporting import log

STALE_SIBLING_SECONDS: Final = 24 * 3600
"""A build staging folder untouched this long belongs to a pod that died without cleaning up
(the operator's build Jobs have a 6 h deadline), so the next build of that engine removes it."""

ManifestCheck = Callable[[Path], tuple[dict[str, Any] | None, str]]
"""(manifest, "") when a folder is a complete artifact, else (None, why not)."""


def check_listed_files(folder: Path, files: Any) -> str:
    """"" if every file a manifest lists is present with its recorded size, else why not.

    Checksums are not re-read: a cache hit must stay fast, and a published folder is only ever
    written by a rename of a finished staging folder.
    """
    if not isinstance(files, list) or not files:
        return "manifest lists no files"
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return f"manifest has a bad file entry {entry!r}"
        try:
            size = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != entry.get("bytes"):
            return f"{rel} has {size} bytes, the manifest says {entry.get('bytes')}"
    return ""


def read_manifest(folder: Path, name: str, schema: int,
                  expect: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` holds a complete artifact, else (None, why not).

    Complete means: a manifest ``name`` of this ``schema`` whose fields equal ``expect`` (the
    artifact's key), and every file it lists present with its recorded size.
    """
    try:
        manifest = json.loads((folder / name).read_text())
    except FileNotFoundError:
        return None, f"no {name}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable {name} ({exc})"
    if not isinstance(manifest, dict):
        return None, f"{name} is not an object"
    if manifest.get("schemaVersion") != schema:
        return None, f"manifest schemaVersion {manifest.get('schemaVersion')!r}"
    for key, value in expect.items():
        if manifest.get(key) != value:
            return None, f"manifest of another {key}"
    why = check_listed_files(folder, manifest.get("files"))
    return (None, why) if why else (manifest, "")


def _aside(path: Path, tag: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return path.with_name(f"{path.name}.{tag}-{stamp}-{secrets.token_hex(3)}")


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or folder; a leftover is not worth failing a job over."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def clear_aside(folder: Path, why: str, what: str = "engine") -> None:
    """Take a folder that is not a valid artifact out of the way: renamed first (one atomic
    step, so no reader sees it at the artifact path any longer), then deleted."""
    aside = _aside(folder, "stale")
    log(f"{folder} is not a valid {what} ({why}): moving it to {aside.name} and removing it")
    os.rename(folder, aside)
    remove_tree(aside)


def newest_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.lstat().st_mtime
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                with contextlib.suppress(OSError):
                    newest = max(newest, (Path(root) / name).lstat().st_mtime)
    return newest


def stale_siblings(output_dir: Path, max_age: float,
                   tags: Iterable[str] = ("staging", "stale")) -> list[Path]:
    """Staging/stale folders beside ``output_dir`` untouched for ``max_age`` seconds, newest
    first."""
    parent = output_dir.parent
    if not parent.is_dir():
        return []
    cutoff = time.time() - max_age
    found: list[tuple[float, Path]] = []
    for tag in tags:
        for path in parent.glob(f"{output_dir.name}.{tag}-*"):
            with contextlib.suppress(OSError):
                newest = newest_mtime(path)
                if newest < cutoff:
                    found.append((newest, path))
    return [p for _, p in sorted(found, reverse=True)]


def sweep_stale_siblings(output_dir: Path, max_age: float = STALE_SIBLING_SECONDS) -> None:
    """Remove staging/stale folders of this artifact left by pods that died without cleanup."""
    for path in stale_siblings(output_dir, max_age):
        log(f"removing {path.name}: left by a job that ended without cleanup")
        remove_tree(path)


def staging_dir(output_dir: Path, owner: str | None = None) -> Path:
    """``<outputDir>.staging-<owner, else the pod name, else random>``: beside the artifact
    folder, hence on the same filesystem, so publishing is one rename."""
    name = owner or os.environ.get("POD_NAME", "")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", name)[:63]
    return output_dir.with_name(f"{output_dir.name}.staging-{name or secrets.token_hex(4)}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path, manifest_name: str,
               skip: Callable[[str], bool] = lambda rel: False) -> list[dict[str, Any]]:
    """Every file under ``folder`` but the manifest (and what ``skip`` says): relative path,
    size, sha256."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != manifest_name and not skip(rel):
            entries.append({"path": rel, "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
    return entries


def _fsync_path(path: Path, *, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (NFS among them) refuse fsync on a directory; file data is what
        # matters, and those errors are surfaced.
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder bottom-up, before the rename makes them visible."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync_path(Path(root) / name, directory=False)
        for name in dirs:
            _fsync_path(Path(root) / name, directory=True)
    _fsync_path(folder, directory=True)


def publish(staging: Path, output_dir: Path, check: ManifestCheck,
            what: str = "engine") -> dict[str, Any] | None:
    """Rename the finished staging folder to the artifact path.

    Returns None when published, or the manifest of an artifact another job published at the
    same path meanwhile (then ours is discarded: same key, same content). Whatever else is at
    the path is no artifact and is moved out of the way.
    """
    fsync_tree(staging)
    for attempt in range(3):
        existing, why = check(output_dir)
        if existing is not None:
            remove_tree(staging)
            return existing
        if os.path.lexists(output_dir):
            clear_aside(output_dir, why, what)
        try:
            os.rename(staging, output_dir)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and attempt < 2:
                continue  # another job renamed first; look again
            raise
        with contextlib.suppress(OSError):
            _fsync_path(output_dir.parent, directory=True)
        return None
    raise JobFailure(Reason.PUBLISH_FAILED, f"could not rename {staging} to {output_dir}")


# --------------------------------------------------------------------------- disk


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    override = os.environ.get(ENV_FREE_BYTES)
    if override:
        return int(override)
    return shutil.disk_usage(existing_parent(path)).free


def with_margin(n: int) -> int:
    """A safety margin on an estimate: 10% plus 1 GiB."""
    return int(n * 1.1) + (1 << 30)


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(existing_parent(a)).st_dev == os.stat(existing_parent(b)).st_dev

