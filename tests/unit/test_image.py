"""The operator image's Dockerfile, checked as text (no container engine on this machine).

What can drift without anyone building the image: the base, the user the chart's
securityContext expects, the entrypoint the package declares, and the build context
(.dockerignore) containing everything the package needs, symlink targets included.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [line.strip() for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in INSTRUCTIONS
            if line.split(None, 1)[0].upper() == name]


def glob_regex(pattern: str) -> str:
    """Docker's globs: ``**/`` any folders, ``*`` and ``?`` within one path segment."""
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return out


def in_context(path: str) -> bool:
    """Whether ``path`` (relative to the repo) is in the build context per .dockerignore.

    The subset of Docker's rules the file uses: later patterns win; a pattern matching a
    parent folder matches the path.
    """
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(re.fullmatch(glob_regex(pattern), c) for c in candidates):
            excluded = not negate
    return not excluded


def test_multi_stage_on_python_slim() -> None:
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    bases = [f.split()[0] for f in instructions("FROM")]
    assert len(bases) >= 2, "multi-stage: build, then a clean runtime"
    resolved = {args.get(b.strip("${}"), b) for b in bases}
    assert resolved == {"python:3.12-slim"}


def test_runs_as_the_user_the_chart_expects() -> None:
    values = yaml.safe_load((REPO / "charts/trtllm-operator/values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    assert instructions("USER")[-1] == f"{uid}:{uid}"


def test_entrypoint_is_the_packages_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "trtllm-operator" in project["scripts"]
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["trtllm-operator", "run"]


def test_everything_copied_is_in_the_build_context() -> None:
    sources = [src for copy in instructions("COPY") if not copy.startswith("--from")
               for src in copy.split()[:-1]]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert in_context(src.rstrip("/")), f"{src} is excluded by .dockerignore"
    assert not in_context(".venv")
    assert not in_context(".git")
    assert not in_context("operator/trtllm_operator/__pycache__/x.pyc")


def test_symlinks_in_the_package_resolve_inside_the_copied_context() -> None:
    copied = [src.rstrip("/") for copy in instructions("COPY") if not copy.startswith("--from")
              for src in copy.split()[:-1]]
    for root, _dirs, files in os.walk(REPO / "operator"):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                continue
            target = path.resolve().relative_to(REPO).as_posix()
            assert any(target == c or target.startswith(c + "/") for c in copied), \
                f"{path.relative_to(REPO)} links to {target}, which the image does not copy"
            assert in_context(target), target
