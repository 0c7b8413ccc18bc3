"""Inference throughput of SmolLM2 width- and depth-pruned students vs the teacher, on this machine.

Students keep about half the non-embedding parameters: width (hidden 432, MLP 768) and depth (15 of
30 layers). Targets on CPU: depth ≥ 1.9×, width ≥ 1.6× prefill (forward) tokens/s.

    .venv/bin/python bench/throughput.py [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import copy

import torch

from hf_minitron import PruningConfig, builtin_teacher, estimate_importance, model_shape, prune_model
from hf_minitron.evaluation.throughput import ThroughputSettings, benchmark_throughput, throughput_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(teacher, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, progress=False)
    models = {
        "teacher": teacher,
        "width": prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), scores),
        "depth": prune_model(copy.deepcopy(teacher), PruningConfig(num_hidden_layers=15), scores),
    }
    dtype = getattr(torch, args.dtype)
    models = {name: model.to(device=args.device, dtype=dtype) for name, model in models.items()}
    for name, model in models.items():
        shape = model_shape(model)
        print(
            f"{name}: {shape.non_embedding_params / 1e6:.1f}M non-embedding params, {shape.num_hidden_layers} "
            f"layers, hidden {shape.hidden_size}, MLP {shape.intermediate_size}"
        )
    settings = ThroughputSettings(repeats=args.repeats)
    results = benchmark_throughput(models, settings)
    print(
        f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, median of {args.repeats} "
        f"interleaved repeats; prefill {settings.prefill_batch}×{settings.prefill_len} tokens (last-position "
        f"logits), decode {settings.new_tokens} new tokens with the KV cache"
    )
    print(throughput_table(results))
    for name, target in (("depth", 1.9), ("width", 1.6)):
        ratio = results[name]["speedup"]["prefill"]
        print(f"{name} / teacher prefill: {ratio:.2f}× (target ≥ {target}×)")


if __name__ == "__main__":
    main()
