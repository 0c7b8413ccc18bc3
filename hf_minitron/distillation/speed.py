"""Speed options for the models of a distillation step, shared by the trainer and the GPU benchmark.

- ``compile_decoder_layers``: ``torch.compile`` each decoder layer in place (regional compilation).
  Every layer of a model runs the same code on the same shapes, so one graph is compiled per model
  and mode (training, no-grad) and reused by all layers; the loss, the embeddings and the LM head
  stay eager. Packed batches change length from step to step: after the first new length the graph
  is recompiled with a dynamic sequence length, once.
- ``apply_liger_layer_kernels``: Liger-Kernel's RMSNorm, SwiGLU and RoPE Triton kernels for one model
  instance. Its fused linear cross-entropy is never applied: it replaces the model's forward, and
  the logit loss already avoids the logits it would save.
- ``cpu_runs_bf16_fast``: whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX),
  where ``bf16=True`` (autocast; the weights and optimizer stay fp32) trains faster than fp32: 1.35×
  for the demo's SmolLM2 student on 2 cores, same held-out perplexity after 16 steps (24.75 vs 24.69).
  Elsewhere a CPU emulates bf16 and is slower, so this is not a default.
"""

from __future__ import annotations

from pathlib import Path

from ..layers import decoder_layers

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def compile_decoder_layers(model, **compile_kwargs) -> int:
    """``torch.compile`` every decoder layer of ``model`` in place; returns how many were compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def apply_liger_layer_kernels(model, config: dict | None = None) -> None:
    """Liger's layer kernels (RMSNorm, SwiGLU, RoPE by default) on ``model``; needs ``liger-kernel`` and Triton."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    settings = {**(config or {}), "fused_linear_cross_entropy": False, "cross_entropy": False}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, **settings)


def cpu_runs_bf16_fast() -> bool:
    """True where the CPU has AVX512-BF16 or AMX-BF16 instructions (Linux: read from /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)
