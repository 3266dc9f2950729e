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
_FILES: Final = {"1.2": "trtllm_flags_1_2.json"}


@dataclass(frozen=True)
class FlagSpec:
    """One flag of one tool, as the table states it."""

    name: str
    """Its main spelling, e.g. ``--max_seq_len`` (also for an alias)."""
    type: str
    choices: tuple[str, ...] | None
    """The values it accepts when the table enumerates them."""

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
def table(tool: Tool, line: str = "1.2") -> FlagTable:
    """The table of ``tool`` for a release line (``KeyError`` for a line without one)."""
    text = resources.files("trtllm_operator").joinpath("data", _FILES[line]).read_text()
    section: dict[str, dict[str, Any]] = json.loads(text)[_SECTIONS[tool]]
    flags: dict[str, FlagSpec] = {}
    for name, entry in section.items():
        if not name.startswith("--"):
            continue  # a positional argument (trtllm-serve's MODEL)
        choices = entry.get("choices")
        spec = FlagSpec(name, entry["type"],
                        tuple(choices) if isinstance(choices, list) else None)
        aliases = entry.get("aliases")
        for spelling in (name, *(aliases if isinstance(aliases, list) else [])):
            flags[spelling] = spec
    return FlagTable(tool, line, flags)


def for_release(tool: Tool, release: facts.Release) -> FlagTable | None:
    """The table to check ``tool``'s flags in ``release`` against, if the project has one.

    The 1.2 table stands for every release that builds engines (1.0 to 1.3.0rc20): it is the
    line the project was read from and tested against.
    """
    return table(tool, "1.2") if release in facts.ENGINE_RELEASES else None
