"""build-jobs/trtllm_flags_1_3.json, the flag table of the TensorRT-LLM PyTorch line
(1.3.0rc21 and later, 1.4.x), checked against shared/reference/trtllm-cli-1.3.json.

The reference is the project's record of what NVIDIA's sources say (outside the repository, like
the 1.2 one); tests that need it skip with the path they looked at when it is absent. The rest
checks the table's own promises: which flags the operator writes, in which spelling, and that a
command line built from them parses the way the real tool would parse it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from trtllm_operator import trtllm_facts as facts

REPO = Path(__file__).resolve().parents[2]
TABLE_PATH = REPO / "build-jobs" / "trtllm_flags_1_3.json"
JOBS_PACKAGE = REPO / "build-jobs" / "trtllm_jobs"
REFERENCE = Path(os.environ.get("TRTLLM_CLI_REFERENCE_1_3")
                 or REPO.parent / "shared" / "reference" / "trtllm-cli-1.3.json")

needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(),
    reason=f"TensorRT-LLM 1.3 flag reference not found at {REFERENCE} "
           "(set TRTLLM_CLI_REFERENCE_1_3)")

USES = {"emitted", "operatorOwned", "extraArg", "refused"}
TYPES = {"str", "int", "float", "path", "flag"}

# What the operator writes on this line (issue 11, "Serving on the new line").
SERVE_EMITTED = {
    "--backend": "--backend", "--host": "--host", "--port": "--port",
    "--tensor_parallel_size": "--tp_size", "--pipeline_parallel_size": "--pp_size",
    "--max_batch_size": "--max_batch_size", "--max_num_tokens": "--max_num_tokens",
    "--max_seq_len": "--max_seq_len", "--max_beam_width": "--max_beam_width",
    "--log_level": "--log_level", "--config": "--config",
    "--served_model_name": "--served_model_name", "--telemetry": "--no-telemetry",
}
PTQ_EMITTED = {"--pyt_ckpt_path", "--qformat", "--kv_cache_qformat", "--dataset", "--calib_size",
               "--calib_seq", "--batch_size", "--export_path"}
ISSUE_FORMATS = {"fp8", "nvfp4", "int4_awq", "w4a8_awq"}


class FlagError(ValueError):
    """A command line the real tool would refuse."""


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TABLE_PATH.read_text())
    return loaded


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REFERENCE.read_text())
    return loaded


def sections(table: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return {"trtllm_serve": table["trtllm_serve"]["options"],
            "modelopt_hf_ptq": table["modelopt_hf_ptq"]["options"],
            "hf_download": table["hf_download"]["cli"]["options"]}


def spellings(options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every accepted spelling (name and aliases) -> the table's name for the option."""
    names: dict[str, str] = {}
    for name, entry in options.items():
        for spelling in (name, *entry.get("aliases", ())):
            assert spelling not in names, f"{spelling} names two options"
            names[spelling] = name
    return names


def parse(options: dict[str, dict[str, Any]], argv: Sequence[str],
          positionals: int) -> dict[str, Any]:
    """Parse ``argv`` as the tool would from its table section: known spellings only, each
    option once unless repeatable, values of the option's type and within its choices, and
    exactly ``positionals`` positional arguments. Returns values by the table's option name."""
    names = spellings(options)
    values: dict[str, Any] = {}
    extra: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--"):
            extra.append(token)
            continue
        if token not in names:
            raise FlagError(f"no such option: {token}")
        name = names[token]
        entry = options[name]
        if name in values and not entry.get("multiple"):
            raise FlagError(f"{name} given twice")
        if entry["type"] == "flag":
            values[name] = not (token != name and token.startswith("--no-"))
            continue
        if i >= len(argv) or argv[i].startswith("--"):
            raise FlagError(f"{token} needs a value")
        raw = argv[i]
        i += 1
        try:
            value: Any = {"int": int, "float": float}.get(entry["type"], str)(raw)
        except ValueError:
            raise FlagError(f"{token} takes {entry['type']}, got {raw!r}") from None
        if entry["choices"] is not None and value not in entry["choices"]:
            raise FlagError(f"{token} {raw!r} is not one of {entry['choices']}")
        if entry.get("multiple"):
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    if len(extra) != positionals:
        raise FlagError(f"expected {positionals} positional argument(s), got {extra}")
    return values


def operator_spellings(options: dict[str, dict[str, Any]], argv: Sequence[str]) -> set[str]:
    """The option spellings a command line uses; each must be an emitted option's emit_as."""
    used = {a for a in argv if a.startswith("--")}
    allowed = {e["emit_as"] for e in options.values() if e["use"] == "emitted"}
    assert used <= allowed, f"not written by the operator: {sorted(used - allowed)}"
    return used


# ------------------------------------------------------------------ the reference's vocabulary

ELIDED = "elided"
_CHOICE = re.compile(r"^Choice\[(.*)\]$")
_CHOICES_IN_NOTE = re.compile(r"Choices at [0-9a-f]+: (.+?)(?: \(|\.$)")


def reference_type(option: dict[str, Any]) -> tuple[str, list[str] | None, bool]:
    """(type, choices, repeatable) in the table's vocabulary, from a reference option entry.

    A type the mapping does not know fails the test, so a new kind of option in the reference
    gets looked at instead of passing unchecked."""
    kind: str = option["type"]
    match = _CHOICE.match(kind)
    if match:
        inner = match.group(1)
        if inner == "...":  # the reference lists long choice sets in the note instead
            listed = _CHOICES_IN_NOTE.search(option.get("note", ""))
            assert listed, f"{option['flag']}: choices elided and not in the note"
            return "str", [c.strip() for c in listed.group(1).split(",")], False
        return "str", [c.strip().strip("'\"") for c in inner.split(",")], False
    if kind.startswith("bool flag"):
        return "flag", None, False
    known = {"int": ("int", False), "float": ("float", False), "str": ("str", False),
             "str (JSON)": ("str", False), "str (YAML path)": ("str", False),
             "str (multiple)": ("str", True), "Path (multiple)": ("path", True)}
    assert kind in known, f"{option['flag']}: reference type {kind!r} is not mapped"
    return known[kind][0], None, known[kind][1]


def reference_serve_options(reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["flag"]: o for o in reference["trtllm-serve"]["options"]}


# ------------------------------------------------------------------ table shape and sources

def test_every_entry_has_a_known_type_use_and_a_source(table: dict[str, Any]) -> None:
    source = re.compile(r"^[\w.-]+/[\w.-]+(@[0-9a-f]{40}:\S+| \S+ \(index files? \d+)")
    for section, options in sections(table).items():
        for name, entry in options.items():
            assert name.startswith("--"), (section, name)
            assert entry["type"] in TYPES, (section, name, entry["type"])
            assert entry["use"] in USES, (section, name, entry["use"])
            assert source.match(entry["source"]), (section, name, entry["source"])
            choices = entry["choices"]
            assert choices is None or (choices and len(set(choices)) == len(choices)), name
            if entry["use"] == "emitted":
                assert entry["emit_as"] in (name, *entry.get("aliases", ())), (section, name)
    for key, entry in table["options_file"]["keys"].items():
        assert entry["use"] in {"written", "notWritten"}, key
        assert source.match(entry["source"]), (key, entry["source"])
    for var, entry in table["environment"].items():
        assert source.match(entry["source"]), (var, entry["source"])


# ------------------------------------------------------------------ trtllm-serve vs reference

@needs_reference
def test_the_table_has_every_serve_option_of_the_reference_and_no_other(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    assert set(table["trtllm_serve"]["options"]) == set(reference_serve_options(reference))
    assert reference["trtllm-serve"]["positional"].startswith("MODEL:")
    assert set(table["trtllm_serve"]["positional"]) == {"MODEL"}


@needs_reference
def test_every_serve_option_has_the_references_type_choices_aliases_and_default(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    real = reference_serve_options(reference)
    checked = 0
    for name, entry in table["trtllm_serve"]["options"].items():
        kind, choices, multiple = reference_type(real[name])
        assert entry["type"] == kind, name
        assert entry.get("multiple", False) == multiple, name
        assert sorted(entry["choices"] or []) == sorted(choices or []), name
        assert sorted(entry.get("aliases", [])) == sorted(real[name].get("aliases", [])), name
        assert entry["default"] == real[name]["default"], name
        assert entry["stability"] == real[name]["stability"], name
        checked += 1
    assert checked == len(real)


@needs_reference
def test_options_the_reference_says_are_gone_are_refused(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    options = table["trtllm_serve"]["options"]
    for name, entry in reference_serve_options(reference).items():
        if "REMOVED" in entry.get("note", ""):
            assert options[name]["use"] == "refused", name
    assert "tensorrt" not in options["--backend"]["choices"]


# ------------------------------------------------------------------ what the operator writes

def test_the_operator_writes_exactly_the_issues_serve_flags(table: dict[str, Any]) -> None:
    options = table["trtllm_serve"]["options"]
    emitted = {n: e["emit_as"] for n, e in options.items() if e["use"] == "emitted"}

    assert emitted == SERVE_EMITTED
    assert all(options[n]["stability"] != "deprecated" for n in emitted if n != "--backend")
    assert options["--log_level"]["choices"] is not None
    assert set(options["--log_level"]["choices"]) == set(typing.get_args(facts.ServeLogLevel))


def serve_command(model: str = "/models/meta-llama--Llama-3.1-8B-Instruct/0e9e39f2/fp8",
                  **changes: str) -> list[str]:
    """A command line of the shape issue 11 asks for, flags in their emit_as spelling."""
    flags = {"--backend": "pytorch", "--host": "0.0.0.0", "--port": "8000", "--tp_size": "2",
             "--pp_size": "1", "--max_batch_size": "64", "--max_num_tokens": "8192",
             "--max_seq_len": "8192", "--max_beam_width": "1", "--log_level": "info",
             "--served_model_name": "llama-3-8b", "--config": "/etc/trtllm/options.yaml"}
    flags |= changes
    argv = ["trtllm-serve", model]
    for flag, value in flags.items():
        argv += [flag, value]
    return [*argv, "--no-telemetry"]


def test_a_command_line_of_the_operators_shape_parses_against_the_table(
        table: dict[str, Any]) -> None:
    options = table["trtllm_serve"]["options"]
    argv = serve_command()

    parsed = parse(options, argv[1:], positionals=1)
    assert operator_spellings(options, argv) == set(SERVE_EMITTED.values())
    assert parsed["--tensor_parallel_size"] == 2
    assert parsed["--telemetry"] is False  # --no-telemetry
    assert parsed["--backend"] == "pytorch"


@pytest.mark.parametrize(("argv", "problem"), [
    (serve_command(**{"--backend": "tensorrt"}), "not one of"),
    (serve_command(**{"--tp_size": "two"}), "takes int"),
    (serve_command(**{"--log_level": "warn"}), "not one of"),
    ([*serve_command(), "--tensor_parallel_size", "2"], "given twice"),
    ([*serve_command(), "--extra_llm_api_options", "/x.yaml"], "given twice"),
    ([*serve_command(), "--engine_dir", "/engine"], "no such option"),
    ([*serve_command(), "--num_postprocess_workers"], "needs a value"),
    ([*serve_command(), "/second/model"], "positional"),
])
def test_the_table_refuses_what_the_cli_would(table: dict[str, Any], argv: list[str],
                                              problem: str) -> None:
    with pytest.raises(FlagError, match=problem):
        parse(table["trtllm_serve"]["options"], argv[1:], positionals=1)


def test_a_1_2_only_spelling_is_not_an_operator_flag_on_this_line(
        table: dict[str, Any]) -> None:
    options = table["trtllm_serve"]["options"]
    argv = [*serve_command(), "--kv_cache_free_gpu_memory_fraction", "0.8"]

    parse(options, argv[1:], positionals=1)  # the CLI takes the alias ...
    with pytest.raises(AssertionError, match="kv_cache_free_gpu_memory_fraction"):
        operator_spellings(options, argv)  # ... but the fraction goes in the options file


# ------------------------------------------------------------------ options file and environment

@needs_reference
def test_options_file_keys_are_the_ones_the_reference_names(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    keys = table["options_file"]["keys"]
    common = reference["extra_llm_api_options"]["common_keys"]
    written = {k for k, e in keys.items() if e["use"] == "written"}

    assert written == {"return_perf_metrics", "enable_iter_perf_stats",
                       "kv_cache_config.free_gpu_memory_fraction"}
    for key in written:
        top, _, nested = key.partition(".")
        assert top in common, key
        assert nested in common[top], key
    enable_via = reference["metrics"]["enable_via"]
    assert "return_perf_metrics: true" in enable_via
    assert "enable_iter_perf_stats: true" in enable_via
    assert reference["metrics"]["prometheus_path"].startswith("/prometheus/metrics ")
    assert "--extra_llm_api_options" in reference_serve_options(reference)["--config"]["aliases"]


@needs_reference
def test_user_options_may_not_repeat_what_the_flags_set(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    refused = set(table["options_file"]["refused_user_keys"]["keys"])
    fields = {f.strip() for key in reference["extra_llm_api_options"]["common_keys"]
              for f in key.split("/")}
    options = table["trtllm_serve"]["options"]
    duplicated = {n[2:] for n, e in options.items() if e["use"] == "emitted"} & fields

    assert duplicated  # the limits and parallelism sizes are LLM API fields too
    assert duplicated <= refused
    written = {k for k, e in table["options_file"]["keys"].items()
               if e["use"] == "written" and "." not in k}
    assert written <= refused


@needs_reference
def test_environment_is_what_the_reference_says_turns_telemetry_and_downloads_off(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    env = table["environment"]
    offline = reference["offline"]

    for var in ("TRTLLM_NO_USAGE_STATS", "HF_HUB_OFFLINE"):
        assert f"{var}={env[var]['value']}" in offline, var
    assert "TRTLLM_NO_USAGE_STATS=1" in json.dumps(reference["sources"])


# ------------------------------------------------------------------ ModelOpt hf_ptq

@needs_reference
def test_hf_ptq_formats_are_the_references(table: dict[str, Any],
                                           reference: dict[str, Any]) -> None:
    tool = reference["quantization"]["tool"]
    listed = re.search(r"hf_ptq\.py qformats: (.+?)\. ", tool)
    assert listed
    options = table["modelopt_hf_ptq"]["options"]

    assert set(options["--qformat"]["choices"]) == {f.strip() for f in listed.group(1).split(",")}
    kv = re.search(r"--kv_cache_qformat <([^>]+)>", tool)
    assert kv
    assert set(kv.group(1).split("|")) <= set(options["--kv_cache_qformat"]["choices"])


@needs_reference
def test_every_hf_ptq_flag_the_reference_names_is_tabled(
        table: dict[str, Any], reference: dict[str, Any]) -> None:
    tool = reference["quantization"]["tool"]
    named = set(re.findall(r"--[a-z_]+", tool)) - {"--quant"}  # huggingface_example.sh's
    names = spellings(table["modelopt_hf_ptq"]["options"])

    assert named
    assert named <= set(names), sorted(named - set(names))
    assert "deprecated" in tool.split("--export_fmt", 1)[1][:40]
    assert table["modelopt_hf_ptq"]["options"]["--export_fmt"]["use"] == "refused"


def test_the_quantize_job_offers_the_issues_formats_and_no_legacy_export(
        table: dict[str, Any]) -> None:
    ptq = table["modelopt_hf_ptq"]
    options = ptq["options"]
    formats = set(ptq["operator_formats"])

    assert formats == ISSUE_FORMATS
    assert formats <= set(options["--qformat"]["choices"])
    assert not formats & set(ptq["legacy_export_formats"])
    assert formats <= set(typing.get_args(facts.QuantFormat))  # the API's names, unchanged
    assert formats <= set(facts.QUANT_FORMAT_MIN_SM)
    assert set(ptq["operator_kv_formats"]) <= set(options["--kv_cache_qformat"]["choices"])
    assert {n for n, e in options.items() if e["use"] == "emitted"} == PTQ_EMITTED


def test_a_quantize_command_parses_and_an_unknown_format_is_caught(
        table: dict[str, Any]) -> None:
    options = table["modelopt_hf_ptq"]["options"]
    argv = ["--pyt_ckpt_path", "/models/llama/0e9e39f2", "--qformat", "fp8",
            "--kv_cache_qformat", "fp8_cast", "--dataset", "/calib/prompts.jsonl",
            "--calib_size", "512", "--calib_seq", "512", "--batch_size", "0",
            "--export_path", "/artifacts/llama/fp8.partial"]

    assert parse(options, argv, positionals=0)["--qformat"] == "fp8"
    assert operator_spellings(options, argv) == PTQ_EMITTED
    # hf_ptq.py itself would export an unquantized model for this: the table must catch it
    argv[3] = "fp16"
    with pytest.raises(FlagError, match="not one of"):
        parse(options, argv, positionals=0)


# ------------------------------------------------------------------ Hugging Face download

def test_hf_download_command_parses_and_keeps_the_token_out_of_argv(
        table: dict[str, Any]) -> None:
    options = table["hf_download"]["cli"]["options"]
    argv = ["meta-llama/Llama-3.1-8B-Instruct", "--revision", "0e9e39f2" * 5,
            "--local-dir", "/models/.partial-1", "--exclude", "*.pth", "--exclude", "*.bin"]

    assert parse(options, argv, positionals=1)["--exclude"] == ["*.pth", "*.bin"]
    assert operator_spellings(options, argv) == {"--revision", "--local-dir", "--exclude"}
    assert options["--token"]["use"] == "refused"


def test_the_build_jobs_snapshot_download_call_uses_only_tabled_arguments(
        table: dict[str, Any]) -> None:
    allowed = set(table["hf_download"]["python_api"]["arguments"])
    calls = [node for path in sorted(JOBS_PACKAGE.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "snapshot_download"]

    assert calls
    for call in calls:
        used = {k.arg for k in call.keywords}
        assert used <= allowed, sorted(used - allowed)
