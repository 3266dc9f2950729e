"""tools/kstatus: pinned to the cli-utils version the tests name, cached by its source."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from trtllm_operator.localcluster import binaries
from trtllm_operator.localcluster.binaries import KSTATUS_MODULE_VERSION, ensure_kstatus

SOURCE = ROOT / "tools" / "kstatus"


def test_the_go_module_pins_the_version_the_cache_is_named_by() -> None:
    gomod = (SOURCE / "go.mod").read_text()
    assert f"sigs.k8s.io/cli-utils {KSTATUS_MODULE_VERSION}\n" in gomod
    assert f"sigs.k8s.io/cli-utils {KSTATUS_MODULE_VERSION} h1:" in (
        SOURCE / "go.sum").read_text()


def _copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src)
    return src


def test_another_pin_is_refused_before_any_build(tmp_path: Path) -> None:
    src = _copy(tmp_path)
    gomod = src / "go.mod"
    gomod.write_text(gomod.read_text().replace(KSTATUS_MODULE_VERSION, "v0.36.0"))
    with pytest.raises(binaries.BinaryError, match=r"does not pin sigs.k8s.io/cli-utils"):
        ensure_kstatus(src, root=tmp_path / "cache")


def test_a_cached_build_is_reused_and_an_edited_source_gets_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, root = _copy(tmp_path), tmp_path / "cache"
    built: list[Path] = []

    def fake_run(cmd: list[str], cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> str:
        assert cmd[:2] == ["go", "build"]
        assert env == {"GOFLAGS": "-mod=readonly -buildvcs=false"}
        out = Path(cmd[cmd.index("-o") + 1])
        out.write_text("binary")
        built.append(out)
        return ""

    monkeypatch.setattr(binaries, "_run", fake_run)
    monkeypatch.setattr(binaries.shutil, "which", lambda _name: "/usr/bin/go")
    first = ensure_kstatus(src, root=root)
    assert first.name == "kstatus"
    assert first.parent.name.startswith(f"kstatus-{KSTATUS_MODULE_VERSION}-")
    assert ensure_kstatus(src, root=root) == first
    assert len(built) == 1
    (src / "main.go").write_text((src / "main.go").read_text() + "\n// edited\n")
    second = ensure_kstatus(src, root=root)
    assert second != first
    assert len(built) == 2
