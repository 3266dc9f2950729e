"""What GitOps tools conclude from an object: kstatus (Flux) through tools/kstatus, and the Argo
CD health check the chart ships, run in Lua 5.1 (the language of Argo CD's gopher-lua)."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from trtllm_operator.localcluster.binaries import ensure_kstatus

HEALTH_LUA = ROOT / "charts" / "trtllm-operator" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "charts" / "trtllm-operator" / "argocd" / "argocd-cm.yaml"
KINDS = ("LLMEngine", "LLMDeployment")


@cache
def kstatus_binary() -> Path:
    return ensure_kstatus(ROOT / "tools" / "kstatus")


def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as sigs.k8s.io/cli-utils' kstatus computes them for ``obj``."""
    proc = subprocess.run([str(kstatus_binary())], input=json.dumps(obj), capture_output=True,
                          text=True, timeout=30, check=True)
    out = json.loads(proc.stdout)
    return out["status"], out["message"]


def argocd_health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    """(hs.status, hs.message) of the chart's health check for ``obj``, as Argo CD runs it:
    the object as the global ``obj``, the script's returned table read."""
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return str(hs["status"]), str(hs["message"] or "")
