"""Stand-in torch: the two context managers the quantize job enters (no tensors needed: the
stand-in model and tokenizer pass lists around)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__version__ = "2.9.0+fake"


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    yield


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    yield
