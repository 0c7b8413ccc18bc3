"""The quantize stage: each final student in every chosen scheme, measured against its unquantized self.

For every student (its last model: aligned, distilled or pruned, as far as the recipe goes) it writes the
torchao variants (``quantize/<student>-<scheme>/``) and GGUF files (``quantize/<student>-<type>.gguf``)
and records, next to the unquantized model, bytes on disk, perplexity and task accuracy (GGUF files
read back through transformers, which dequantizes them) and prefill speed (torchao variants only:
a GGUF file's speed is llama.cpp's, not measured here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..quantization import export_gguf, quantize_model
from ..quantization.weights import folder_bytes
from .stages import Run


def final_stage(run: Run) -> str:
    return run.model_stages()[-1][0]


def quantize(run: Run, folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from ..evaluation.throughput import ThroughputSettings, benchmark_throughput
    from .evaluate import THROUGHPUT, score_model

    settings, evaluation = run.recipe.quantize, run.recipe.evaluate
    _, tokenizer = run.teacher()
    table = {}
    for name in run.recipe.student_names:
        source = run.student_folder(final_stage(run), name)
        models = {"unquantized": run.load(source)}
        sizes = {"unquantized": folder_bytes(source)}
        for scheme in settings.schemes:
            target = quantize_model(source, folder / f"{name}-{scheme}", scheme, settings.group_size)
            models[scheme] = AutoModelForCausalLM.from_pretrained(target)
            sizes[scheme] = folder_bytes(target)
        for kind in settings.gguf:
            path = export_gguf(source, folder / f"{name}-{kind}.gguf", kind, tokenizer=tokenizer)
            models[f"GGUF {kind}"] = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=path.name, dtype=torch.float32
            )
            sizes[f"GGUF {kind}"] = path.stat().st_size
        speed = (
            benchmark_throughput(
                {k: v for k, v in models.items() if not k.startswith("GGUF")}, ThroughputSettings(**THROUGHPUT)
            )
            if evaluation.throughput
            else {}
        )
        table[name] = {}
        for variant, model in models.items():
            result = score_model(model, tokenizer, evaluation)
            table[name][variant] = {
                "bytes": sizes[variant],
                "perplexity": result.get("perplexity", {}).get("perplexity"),
                "task_mean_acc": result.get("task_mean_acc"),
                "prefill_speedup": speed.get(variant, {}).get("speedup", {}).get("prefill"),
            }
            print(
                f"  {name} {variant}: {sizes[variant]} bytes, perplexity {table[name][variant]['perplexity']}",
                file=sys.stderr,
            )
        del models
    (folder / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    return {"variants": {name: list(rows) for name, rows in table.items()}}


def quantized_table(rows: dict, markdown: bool = False) -> str:
    """One row per variant: size (and its ratio), perplexity, mean task accuracy, prefill speed."""
    from ..tables import format_table

    base = rows["unquantized"]["bytes"]
    header = ["variant", "size", "vs unquantized", "perplexity", "mean task acc", "prefill speed"]
    table = [header]
    for variant, row in rows.items():
        table.append(
            [
                variant,
                f"{row['bytes'] / 2**20:.1f} MiB",
                f"{row['bytes'] / base:.2f}×",
                f"{row['perplexity']:.2f}" if row["perplexity"] is not None else "-",
                f"{100 * row['task_mean_acc']:.1f}" if row["task_mean_acc"] is not None else "-",
                f"{row['prefill_speedup']:.2f}×" if row["prefill_speedup"] is not None else "-",
            ]
        )
    return format_table(table, markdown=markdown)
