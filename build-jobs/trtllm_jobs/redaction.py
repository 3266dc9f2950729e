"""Secrets never reach a log, a termination message or a file: every line this process prints
and every tool's output pass through :func:`redact`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO, cast

from .contract import SECRET_ENV

_secrets: tuple[str, ...] = ()


def set_secrets(environ: Mapping[str, str]) -> None:
    """Remember the values that must never be shown (the Hugging Face token)."""
    global _secrets
    _secrets = tuple(v for k in SECRET_ENV if len(v := environ.get(k, "").strip()) >= 4)


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class RedactingStream:
    """A text stream that redacts secrets before passing whole lines to ``target``.

    Installed as sys.stdout and sys.stderr so that nothing in this process -- including
    huggingface_hub's own logging and warnings -- can print the token. Output is held until a
    line ends (a token never spans lines), so a token split over two writes is still caught.
    """

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r"))
        if cut >= 0:
            self._target.write(redact(self._pending[: cut + 1]))
            self._pending = self._pending[cut + 1:]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(redact(self._pending))
            self._pending = ""
        self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def install_redaction() -> None:
    """Route this process's stdout and stderr through :class:`RedactingStream`."""
    if _secrets:
        sys.stdout = cast(TextIO, RedactingStream(sys.stdout))
        sys.stderr = cast(TextIO, RedactingStream(sys.stderr))
