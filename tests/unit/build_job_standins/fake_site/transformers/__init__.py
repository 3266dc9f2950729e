"""Stand-in transformers: AutoTokenizer / AutoModelForCausalLM.from_pretrained that refuse any
keyword or value the project's table does not give (local_files_only, never a download), a
tokenizer that pads only once a pad token is set, and a model that counts its forward calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from standin_log import check_values, record, reject, table


def _checkpoint(call: str, path: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        reject(call, f"{path} is not a local checkpoint folder (no config.json)")
    return folder


class BatchEncoding(dict[str, Any]):
    def to(self, device: str) -> BatchEncoding:
        self["device"] = device
        return self


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pad_token: str | None = None
        self.eos_token = "</s>"

    def __call__(self, text: list[str], **kwargs: Any) -> BatchEncoding:
        rules = table()["transformers"]["tokenizer"]
        check_values("tokenizer", kwargs, rules["values"], tuple(rules["also"]))
        if kwargs.get("padding") and self.pad_token is None:
            reject("tokenizer", "Asking to pad but the tokenizer does not have a padding token")
        return BatchEncoding(input_ids=[[len(t)] for t in text])

    def save_pretrained(self, folder: str) -> None:
        out = Path(folder)
        (out / "tokenizer.json").write_text('{"model": "fake"}')
        (out / "tokenizer_config.json").write_text(json.dumps({"pad_token": self.pad_token}))
        record("tokenizer.save_pretrained", folder=folder)


class Model:
    device = "cuda:0"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.forwards = 0
        self.samples = 0
        self.quantized_with: str | None = None
        self.kv_quantized = False

    def __call__(self, **batch: Any) -> None:
        if "input_ids" not in batch:
            reject("model.forward", f"no input_ids in {sorted(batch)}")
        self.forwards += 1
        self.samples += len(batch["input_ids"])


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path: str, **kwargs: Any) -> Tokenizer:
        check_values("AutoTokenizer.from_pretrained", kwargs,
                     table()["transformers"]["AutoTokenizer.from_pretrained"]["values"])
        record("AutoTokenizer.from_pretrained", path=path)
        return Tokenizer(_checkpoint("AutoTokenizer.from_pretrained", path))


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path: str, **kwargs: Any) -> Model:
        check_values("AutoModelForCausalLM.from_pretrained", kwargs,
                     table()["transformers"]["AutoModelForCausalLM.from_pretrained"]["values"])
        record("AutoModelForCausalLM.from_pretrained", path=path)
        return Model(_checkpoint("AutoModelForCausalLM.from_pretrained", path))
