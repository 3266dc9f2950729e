"""trtllm-operator: TensorRT-LLM engines per GPU type, and trtllm-serve fleets on them."""

__version__ = "0.1.0"
