"""TensorRT-LLM facts: release parsing, and agreement with the flag table they came from."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

import pytest

from trtllm_operator import trtllm_facts as facts
from trtllm_operator.api.engine import BuildPlugins, Calibration

REFERENCE = Path(os.environ.get("TRTLLM_CLI_REFERENCE",
                                "/work/shared/reference/trtllm-cli-1.2.json"))


@pytest.mark.parametrize(("image", "release"), [
    ("nvcr.io/nvidia/tensorrt-llm/release:1.2.0", "1.2.0"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.2.0.post1", "1.2.0.post1"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc6.post2", "1.2.0rc6.post2"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc6", "1.3.0rc6"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc20", "1.3.0rc20"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc21", "1.3.0rc21"),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.3.0", "1.3.0"),
    ("nvcr.io/nvidia/tensorrt-llm/release:v1.2.1", "1.2.1"),
    ("registry.local:5000/tensorrt-llm:v1.1", "1.1.0"),
    ("host:5000/img:1.2.0", "1.2.0"),
    ("host:5000/img", None),
    ("registry.local:5000/tensorrt-llm", None),
    ("nvcr.io/nvidia/tensorrt-llm/release", None),
    ("nvcr.io/nvidia/tensorrt-llm/release:latest", None),
    ("nvcr.io/nvidia/tensorrt-llm/release:nightly", None),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.3.0.dev2026070100", None),
    ("nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "a" * 64, None),
    ("nvcr.io/nvidia/tensorrt-llm/release:1.2.0@sha256:" + "a" * 64, "1.2.0"),
])
def test_release_is_read_from_the_image_tag(image: str, release: str | None) -> None:
    found = facts.release_of_image(image)

    assert (str(found) if found else None) == release


@pytest.mark.parametrize(("older", "newer"), [
    ("1.2.0", "1.2.0.post1"),
    ("1.2.0rc6", "1.2.0rc6.post2"),
    ("1.2.0rc6.post2", "1.2.0"),
    ("1.3.0rc2", "1.3.0rc10"),  # numerically, not as text
    ("1.3.0rc20", "1.3.0rc21"),
    ("1.3.0rc21", "1.3.0"),  # a final release comes after every candidate
    ("1.3.0", "1.4.0rc0"),
    ("0.21.0", "1.0.0rc0"),
])
def test_releases_order_as_versions(older: str, newer: str) -> None:
    a, b = facts.parse_release(older), facts.parse_release(newer)

    assert a is not None
    assert b is not None
    assert a < b
    assert not b < a
    assert a != b


@pytest.mark.parametrize(("release", "builds"), [
    ("0.21.0", False), ("1.0.0rc1", True), ("1.0.0", True), ("1.2.0", True),
    ("1.2.0.post1", True), ("1.3.0rc0", True), ("1.3.0rc20", True),
    ("1.3.0rc20.post1", True), ("1.3.0rc21", False), ("1.3.0", False), ("1.4.0", False),
    ("1.4.2", False), ("2.0.0", False),
])
def test_trtllm_build_ships_up_to_1_3_0rc20(release: str, builds: bool) -> None:
    parsed = facts.parse_release(release)

    assert parsed is not None
    assert (parsed in facts.ENGINE_RELEASES) is builds


@pytest.mark.parametrize("text", ["latest", "1", "1.2.3.4", "1.2.0-beta", "01.2.0", " 1.2.0",
                                  "1.2.0rc", "nightly", ""])
def test_text_that_is_no_release(text: str) -> None:
    assert facts.parse_release(text) is None


def test_a_stated_release_overrides_the_tag() -> None:
    digest = "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "a" * 64

    assert facts.effective_release(digest, None) is None
    assert facts.effective_release(digest, "1.3.0rc20") == facts.Release(1, 3, 0, rc=20)
    assert str(facts.effective_release("img:1.2.0", "1.2.1")) == "1.2.1"


def test_every_quantization_format_has_a_minimum_compute_capability() -> None:
    assert set(facts.QUANT_FORMAT_MIN_SM) == set(typing.get_args(facts.QuantFormat))
    assert set(facts.QUANT_FORMAT_MIN_SM) >= facts.QUANT_FORMATS_NEEDING_CALIBRATION


# --------------------------------------------------------------------------- the flag table

needs_reference = pytest.mark.skipif(not REFERENCE.exists(),
                                     reason=f"flag table not found at {REFERENCE}")


def reference() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REFERENCE.read_text())
    return loaded


def flags(tool: str) -> dict[str, dict[str, Any]]:
    table = {}
    for arg in reference()[tool]["args"]:
        names = [arg["flag"], *arg.get("aliases", []), *arg.get("aliases_newer", [])]
        for name in names:
            if isinstance(name, str):
                table[name] = arg
    return table


@needs_reference
def test_quantization_facts_match_the_table() -> None:
    quantize = flags("quantize_py")
    qformats = set(quantize["--qformat"]["choices"]) - {"full_prec"}
    derived = {k: v for k, v in reference()["arch_support"]["derived_min_sm"].items()
               if k != "note"}

    assert set(typing.get_args(facts.QuantFormat)) == qformats
    assert derived == facts.QUANT_FORMAT_MIN_SM
    assert set(typing.get_args(facts.Dtype)) == set(quantize["--dtype"]["choices"])
    assert set(typing.get_args(facts.KvCacheDtype)) == {
        c for c in quantize["--kv_cache_dtype"]["choices"] if c}
    assert Calibration().size == quantize["--calib_size"]["default"]
    assert Calibration().max_seq_length == quantize["--calib_max_seq_length"]["default"]
    assert Calibration().batch_size == quantize["--batch_size"]["default"]
    assert Calibration().dataset == quantize["--calib_dataset"]["default"]


@needs_reference
def test_every_typed_plugin_is_a_real_trtllm_build_flag_with_its_choices() -> None:
    build = flags("trtllm_build")
    hints = typing.get_type_hints(BuildPlugins)
    for name in BuildPlugins.model_fields:
        flag = build[f"--{name}"]
        assert flag.get("group") == "plugin", name
        choices = [a for a in typing.get_args(hints[name]) if a is not type(None)]
        literal = choices[0]
        if flag["choices"]:
            assert list(typing.get_args(literal)) == flag["choices"], name
        else:
            assert flag["type"] == "int", name


@needs_reference
def test_flags_the_operator_writes_exist() -> None:
    build, serve = flags("trtllm_build"), flags("trtllm_serve")

    assert set(facts.BUILD_FLAGS_SET_BY_OPERATOR) <= build.keys()
    assert set(facts.SERVE_FLAGS_SET_BY_OPERATOR) <= serve.keys()
    assert list(typing.get_args(facts.ServeLogLevel)) == serve["--log_level"]["choices"]


@needs_reference
def test_build_defaults_match_the_table() -> None:
    build = flags("trtllm_build")

    assert build["--max_batch_size"]["default"] == facts.BUILD_DEFAULT_MAX_BATCH_SIZE
    assert build["--max_input_len"]["default"] == facts.BUILD_DEFAULT_MAX_INPUT_LEN
    assert build["--max_num_tokens"]["default"] == facts.BUILD_DEFAULT_MAX_NUM_TOKENS
    assert build["--max_beam_width"]["default"] == facts.BUILD_DEFAULT_MAX_BEAM_WIDTH
    assert flags("trtllm_serve")["--port"]["default"] == facts.DEFAULT_SERVE_PORT
