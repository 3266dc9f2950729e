"""Fake tensorrt_llm: the build job must read the version without importing the package
(the real import takes long and initializes CUDA)."""

raise RuntimeError("the build job imported tensorrt_llm; it must only read its version")
