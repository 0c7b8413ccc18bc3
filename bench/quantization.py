"""Size, CPU forward speed and quality of each quantized variant of a pruned model, side by side.

The SmolLM2 teacher is depth-pruned to 24 of 30 layers (the contiguous block with the lowest LM
loss; widths stay multiples of 32, so every GGUF block type applies to every matrix) and briefly
distilled; then: torchao int8 and int4 weight-only (what transformers runs), and GGUF F16, Q8_0 and
Q4_0 (for llama.cpp; read back through transformers, which dequantizes them, so their speed here is
not llama.cpp's and is not reported). Quality: perplexity on held-out documentation and the first
rows of local ARC-Easy and PIQA.

    .venv/bin/python bench/quantization.py [--rows 100] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_minitron import PruningConfig, builtin_teacher, estimate_importance, prune_model, save_pruned_model
from hf_minitron.data import iter_texts
from hf_minitron.distillation import DistillationTrainer
from hf_minitron.evaluation import evaluate_model, results_table
from hf_minitron.evaluation.throughput import ThroughputSettings, benchmark_throughput
from hf_minitron.quantization import export_gguf, quantize_model
from hf_minitron.quantization.weights import folder_bytes

from common import short_distillation_config

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(
        teacher,
        tokenizer,
        "builtin:python-docs",
        num_samples=16,
        seq_len=256,
        block_lm_loss_sizes=[6],
        progress=False,
    )
    student = prune_model(
        copy.deepcopy(teacher), PruningConfig(num_hidden_layers=24, layer_selection="lm_loss"), scores
    )
    train = datasets.Dataset.from_dict({"text": list(iter_texts("builtin:python-docs"))})
    DistillationTrainer(
        model=student.requires_grad_(True),
        teacher_model=teacher,
        processing_class=tokenizer,
        train_dataset=train,
        args=short_distillation_config("/tmp/bench-quant", args.steps, 4, 128),
    ).train()
    student.eval()
    work = Path(tempfile.mkdtemp(prefix="bench-quant-"))
    save_pruned_model(student, work / "fp32", tokenizer=tokenizer)
    models = {"fp32": student}
    sizes = {"fp32": folder_bytes(work / "fp32")}
    for scheme, group in (("int8", 32), ("int4", 32)):
        folder = quantize_model(work / "fp32", work / scheme, scheme, group_size=group)
        models[f"torchao {scheme}"] = AutoModelForCausalLM.from_pretrained(folder).eval()
        sizes[f"torchao {scheme}"] = folder_bytes(folder)
    for kind in ("F16", "Q8_0", "Q4_0"):
        path = export_gguf(student, work / f"student-{kind}.gguf", kind, tokenizer=tokenizer)
        models[f"GGUF {kind}"] = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name, dtype=torch.float32)
        sizes[f"GGUF {kind}"] = path.stat().st_size
    tasks = {name: str(EVAL / f"{name}.jsonl") for name in ("arc_easy", "piqa")}
    results = {
        name: evaluate_model(
            model,
            tokenizer,
            tasks=tasks,
            perplexity_data="builtin:python-docs-heldout",
            limit=args.rows,
            seq_len=256,
            max_tokens=4096,
            progress=False,
        )
        for name, model in models.items()
    }
    speed_models = {k: v for k, v in models.items() if not k.startswith("GGUF")}
    speed = benchmark_throughput(
        speed_models,
        ThroughputSettings(prefill_batch=2, prefill_len=256, decode_batches=(1,), new_tokens=32, repeats=3),
    )
    print(f"\nSmolLM2 depth-pruned to 24 layers, distilled {args.steps} steps; first {args.rows} rows per task")
    print(results_table(results))
    print()
    print("variant          bytes on disk   vs fp32   prefill tokens/s (vs fp32)   decode b1 tokens/s (vs fp32)")
    for name in models:
        line = f"{name:<16} {sizes[name]:>13}   {sizes[name] / sizes['fp32']:6.3f}×"
        if name in speed:
            s = speed[name]
            line += f"   {s['prefill']:8.0f} ({s['speedup']['prefill']:.2f}×)          "
            line += f"   {s['decode_b1']:6.1f} ({s['speedup']['decode_b1']:.2f}×)"
        print(line)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/quantization.json").write_text(
        json.dumps({"results": results, "sizes": sizes, "speed": speed}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
