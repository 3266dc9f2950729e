"""The command-line flags of ``trtllm-build`` and ``trtllm-serve`` per release line.

Read from the table the project keeps (``build-jobs/trtllm_flags_1_2.json``, linked into the
package as data): the build job embeds a tested copy of its ``trtllm_build`` section, the
operator reads the file itself, so both judge a flag by the same facts. Each entry gives the
flag's type (``flag`` = a switch taking no value; ``... nargs+`` / ``multiple`` = one or more
values; anything else = one value), its choices when enumerated, other spellings, and its use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final, Literal

from trtllm_operator import trtllm_facts as facts

Tool = Literal["trtllm-build", "trtllm-serve"]
Arity = Literal["none", "one", "many"]

_SECTIONS: Final[dict[Tool, str]] = {"trtllm-build": "trtllm_build",
                                     "trtllm-serve": "trtllm_serve"}
_FILES: Final = {"1.2": "trtllm_flags_1_2.json", "1.3": "trtllm_flags_1_3.json"}


@dataclass(frozen=True)
class FlagSpec:
    """One flag of one tool, as the table states it."""

    name: str
    """Its main spelling, e.g. ``--max_seq_len`` (also for an alias)."""
    type: str
    choices: tuple[str, ...] | None
    """The values it accepts when the table enumerates them."""
    use: str | None = None
    """What the operator does with it (1.3 table): emitted, operatorOwned, extraArg, refused."""
    note: str | None = None
    """Why, when the table says."""
    emit_as: str | None = None
    """The spelling the operator writes, for an emitted flag."""

    @property
    def arity(self) -> Arity:
        """How many values follow the flag."""
        if self.type == "flag":
            return "none"
        return "many" if "nargs+" in self.type or "multiple" in self.type else "one"


@dataclass(frozen=True)
class FlagTable:
    """The flags of one tool in one release line, by every spelling."""

    tool: Tool
    line: str
    """The release line the table was read for, e.g. ``1.2``."""
    flags: dict[str, FlagSpec]

    def get(self, name: str) -> FlagSpec | None:
        return self.flags.get(name)


@cache
def _document(line: str) -> dict[str, Any]:
    text = resources.files("trtllm_operator").joinpath("data", _FILES[line]).read_text()
    document: dict[str, Any] = json.loads(text)
    return document


@cache
def table(tool: Tool, line: str = "1.2") -> FlagTable:
    """The table of ``tool`` for a release line (``KeyError`` for a line without one)."""
    section: dict[str, Any] = _document(line)[_SECTIONS[tool]]
    # The 1.3 table nests the flags under "options" (next to "positional"); 1.2 lists them flat.
    entries: dict[str, dict[str, Any]] = section.get("options", section)
    flags: dict[str, FlagSpec] = {}
    for name, entry in entries.items():
        if not name.startswith("--"):
            continue  # a positional argument (trtllm-serve's MODEL)
        choices = entry.get("choices")
        kind = entry["type"] + (" multiple" if entry.get("multiple") else "")
        spec = FlagSpec(name, kind, tuple(choices) if isinstance(choices, list) else None,
                        entry.get("use"), entry.get("note"), entry.get("emit_as"))
        aliases = entry.get("aliases")
        for spelling in (name, *(aliases if isinstance(aliases, list) else [])):
            flags[spelling] = spec
    return FlagTable(tool, line, flags)


def line_of(release: facts.Release) -> str | None:
    """The flag table line a release is checked against: ``1.2`` for every release that
    builds engines (1.0 to 1.3.0rc20), ``1.3`` for the PyTorch line (1.3.0rc21 on); None
    before 1.0."""
    if release in facts.ENGINE_RELEASES:
        return "1.2"
    return "1.3" if release in facts.PYTORCH_RELEASES else None


def for_release(tool: Tool, release: facts.Release) -> FlagTable | None:
    """The table to check ``tool``'s flags in ``release`` against, if the project has one.

    The 1.2 table stands for every release that builds engines: it is the line the project was
    read from and tested against. The PyTorch line has no trtllm-build.
    """
    line = line_of(release)
    if line is None or (tool == "trtllm-build" and line != "1.2"):
        return None
    return table(tool, line)


@dataclass(frozen=True)
class OptionsFile:
    """How trtllm-serve takes its options file on a release line, and the keys users may not
    set in it."""

    flag: str
    refused_user_keys: tuple[str, ...]
    why_refused: str


@cache
def options_file(line: str) -> OptionsFile:
    """The options-file facts of a release line: the flag from the table (``--config`` on the
    PyTorch line); 1.2 has only ``--extra_llm_api_options`` and refuses no key."""
    section = _document(line).get("options_file")
    if section is None:
        return OptionsFile("--extra_llm_api_options", (), "")
    refused = section["refused_user_keys"]
    return OptionsFile(section["flag"], tuple(refused["keys"]), refused["why"])
