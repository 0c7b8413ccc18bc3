"""The end-of-run summary: parameters, perplexity after each stage and speed of every model, as a table."""

from __future__ import annotations

import json

from ..shapes import human_count
from ..tables import format_table
from .stages import Run


def summary(run: Run, records: dict) -> tuple[str, dict]:
    """The end-of-run table (parameters and perplexity before/after each stage) and its JSON."""
    results = json.loads((run.folder("evaluate") / "results.json").read_text())
    shapes = records["evaluate"]["shapes"]
    generations = json.loads((run.folder("evaluate") / "generations.json").read_text())
    speed = json.loads((run.folder("evaluate") / "throughput.json").read_text())
    labels = [label for _, label in run.model_stages()]
    # Students pruned here were re-fitted by least squares unless the recipe turned reconstruction off.
    refitted = run.recipe.reconstruction is not None and run.recipe.students
    header = {"pruned": "ppl pruned + re-fit" if refitted else "ppl pruned"}
    rows = [["model", "params", "w/o embeddings", *[header.get(lb, f"ppl {lb}") for lb in labels], "prefill speed"]]

    def ppl(key):
        entry = results.get(key, {}).get("perplexity")
        return f"{entry['perplexity']:.2f}" if entry else "-"

    rows.append(
        [
            "teacher",
            human_count(shapes["teacher"]["params"]),
            human_count(shapes["teacher"]["non_embedding_params"]),
            ppl("teacher"),
            *["" for _ in labels[1:]],
            "1.00×",
        ]
    )
    for name in run.recipe.student_names:
        ratio = speed.get(name, {}).get("speedup", {}).get("prefill")
        rows.append(
            [
                name,
                human_count(shapes[name]["params"]),
                human_count(shapes[name]["non_embedding_params"]),
                *[ppl(f"{name} {label}") for label in labels],
                f"{ratio:.2f}×" if ratio else "-",
            ]
        )
    table = format_table(rows)
    quantized = run.folder("quantize") / "results.json"
    quantized = json.loads(quantized.read_text()) if run.recipe.quantize and quantized.is_file() else {}
    if quantized:
        from .quantized import quantized_table

        for name, variants in quantized.items():
            table += f"\n\nQuantized variants of {name}:\n" + quantized_table(variants)
    tokens = {name: s["tokens"] for name, s in records.get("distill", {}).get("students", {}).items()}
    data = {
        "results": results,
        "shapes": shapes,
        "distillation_tokens": tokens,
        "generations": generations,
        "throughput": speed,
        "perplexity_data": records["evaluate"]["perplexity_data"],
        "quantized": quantized,
    }
    return table, data
