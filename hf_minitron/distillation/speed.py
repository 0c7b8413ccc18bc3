"""Speed options for the models of a distillation step, shared by the trainer and the GPU benchmark.

- ``compile_decoder_layers``: ``torch.compile`` each decoder layer in place (regional compilation).
  Every layer of a model runs the same code on the same shapes, so one graph is compiled per model
  and mode (training, no-grad) and reused by all layers; the loss, the embeddings and the LM head
  stay eager. Packed batches change length from step to step: after the first new length the graph
  is recompiled with a dynamic sequence length, once.
- ``apply_liger_layer_kernels``: Liger-Kernel's RMSNorm, SwiGLU and RoPE Triton kernels for one model
  instance. Its fused linear cross-entropy is never applied: it replaces the model's forward, and
  the logit loss already avoids the logits it would save.
- ``teacher_dtype``: the dtype the frozen teacher runs in when none is asked for: the training's
  half precision (its matmuls would run there under autocast anyway, and it halves the teacher's
  memory), else fp32.
"""

from __future__ import annotations

import torch

from ..layers import decoder_layers


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


def teacher_dtype(args) -> torch.dtype:
    """bf16 / fp16 when training in it, else fp32."""
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return torch.float32
