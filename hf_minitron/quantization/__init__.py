"""Quantization, the third compression tool: torchao weight quantization and GGUF export for llama.cpp."""

from .gguf_export import GGUF_TYPES, export_gguf
from .weights import SCHEMES, available_schemes, quantize_model

__all__ = ["GGUF_TYPES", "SCHEMES", "available_schemes", "export_gguf", "quantize_model"]
