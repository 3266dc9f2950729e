"""trtllm-operator's job entrypoints: a standard-library-only package run inside the stock
NVIDIA TensorRT-LLM images, delivered by the operator through a ConfigMap (one key per file).

One module per job kind, each run as ``python3 -m trtllm_jobs.<kind>``:

- ``build``: compile one TensorRT-LLM engine for one GPU type (1.2 line) and publish it;
- ``download``: fetch one Hugging Face repo at one commit into the shared model cache;
- ``quantize``: ModelOpt post-training quantization of a cached checkpoint into a Hugging Face
  (unified) checkpoint for the PyTorch line, published like an engine.

A new kind is one more module with a ``main()`` that calls
``reporting.start`` and ``reporting.run_job``, reads its spec through ``spec``, reports failures
as ``contract.Reason`` values and publishes through ``publish``; add its name to
:data:`JOB_KINDS`. Shared modules: ``contract`` (reasons, exit codes, field checks), ``spec``
(the spec contract), ``facts`` (TensorRT-LLM facts), ``redaction``, ``reporting``, ``tools``
(running external tools), ``publish`` (staging, manifest, atomic rename), ``hub`` (Hugging
Face access), ``cache`` (the model cache layout).
"""

from __future__ import annotations

from typing import Final

JOB_KINDS: Final = ("build", "download", "quantize")
"""Every ``trtllm_jobs.<kind>`` entry module."""
