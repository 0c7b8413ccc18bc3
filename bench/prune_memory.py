"""Pruning time and peak memory on a Llama-3.2-1B-shaped random model (bf16).

Pruning should cost about one copy of the kept weights at most: each tensor is sliced
and the original released before the next, so the peak stays near model size plus the
largest tensor. Reports peak RSS during pruning relative to the model's size.

    .venv/bin/python bench/prune_memory.py
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).parent))
from hf_minitron import ImportanceScores, PruningConfig, model_shape, prune_model

from common import gib, peak_rss_bytes, reset_peak_rss, rss_bytes

LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)
TARGET = PruningConfig(hidden_size=1536, intermediate_size=6144, num_attention_heads=24, num_hidden_layers=14)


def random_scores(config) -> ImportanceScores:
    generator = torch.Generator().manual_seed(0)
    layers = config.num_hidden_layers
    return ImportanceScores(
        heads=torch.rand(layers, config.num_attention_heads, generator=generator),
        neurons=torch.rand(layers, config.intermediate_size, generator=generator),
        neuron_energy=torch.rand(layers, config.intermediate_size, generator=generator),
        channels_per_layer=torch.rand(layers, config.hidden_size, generator=generator),
        block_importance=torch.rand(layers, generator=generator),
    )


def main() -> None:
    config = LlamaConfig(**LLAMA_3_2_1B)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    scores = random_scores(config)
    before = model_shape(model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    baseline = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    prune_model(model, TARGET, scores)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    gc.collect()
    after = model_shape(model)
    kept_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        f"Llama-3.2-1B shape, bf16: {before.params / 1e9:.3f}B → {after.params / 1e9:.3f}B params "
        f"(hidden {before.hidden_size}→{after.hidden_size}, MLP {before.intermediate_size}→"
        f"{after.intermediate_size}, heads {before.num_attention_heads}→{after.num_attention_heads}, "
        f"layers {before.num_hidden_layers}→{after.num_hidden_layers})"
    )
    print(f"  model size {gib(model_bytes)}, kept weights {gib(kept_bytes)}")
    print(f"  RSS before pruning {gib(baseline)}, peak during pruning {gib(peak)}, after {gib(rss_bytes())}")
    print(f"  pruning time {seconds:.2f} s")
    print(f"  extra memory at peak / kept weights: {(peak - baseline) / kept_bytes:.2f}×  (target ≤ ~1×)")
    print(f"  peak RSS / model size: {peak / model_bytes:.2f}×")


if __name__ == "__main__":
    main()
