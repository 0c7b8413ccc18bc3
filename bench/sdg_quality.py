"""Same student, same token budget: distilled on a local text corpus vs on teacher-generated data.

The SmolLM2-135M teacher is pruned to the width student (hidden 432, MLP 768, activation
importance). Two copies are distilled from the teacher with identical settings and the same
number of packed tokens: (a) on Python's bundled documentation (the local corpus), (b) on answers
the teacher wrote to the built-in seed prompts (sequence-level plus logit KD on the same data).
Both are evaluated on text neither trained on — Tiny Shakespeare and the held-out documentation
topics — and on the first rows of local ARC-Easy, PIQA and Winogrande.

    .venv/bin/python bench/sdg_quality.py [--steps 60] [--prompts 192] [--rows 150]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).parent))
from hf_minitron import PruningConfig, builtin_teacher, estimate_importance, prune_model
from hf_minitron.data import iter_texts
from hf_minitron.distillation import DistillationTrainer
from hf_minitron.distillation_data import GenerationSettings, generate_distillation_data
from hf_minitron.evaluation import evaluate_model, perplexity, results_table

from common import short_distillation_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIDTH = PruningConfig(hidden_size=432, intermediate_size=768)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--rows", type=int, default=150, help="rows of each task")
    parser.add_argument("--data-dir", default="bench/out/sdg-data", help="generated data (resumed if there)")
    parser.add_argument("--output", default="bench/out/sdg_quality.json")
    args = parser.parse_args()
    start = time.time()
    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(teacher, tokenizer, "builtin:python-docs", num_samples=32, seq_len=256, progress=False)
    student = prune_model(copy.deepcopy(teacher), WIDTH, scores)
    generation = generate_distillation_data(
        teacher,
        output_dir=args.data_dir,
        settings=GenerationSettings(
            max_new_tokens=args.new_tokens, batch_size=16, shard_size=32, max_prompts=args.prompts, seed=0
        ),
        tokenizer=tokenizer,
    )
    print(
        f"generated {generation.rows} answers, {generation.tokens} tokens at "
        f"{generation.record['progress']['tokens_per_second']} tokens/s",
        flush=True,
    )
    sources = {
        "corpus (python docs)": datasets.Dataset.from_dict({"text": list(iter_texts("builtin:python-docs"))}),
        "teacher-generated": datasets.load_dataset(args.data_dir, split="train"),
    }
    tasks = {name: str(SHARED / "eval" / f"{name}.jsonl") for name in ("arc_easy", "piqa", "winogrande")}
    unseen = str(SHARED / "corpus" / "tinyshakespeare.txt")

    def evaluate(model):
        result = evaluate_model(
            model,
            tokenizer,
            tasks=tasks,
            perplexity_data=unseen,
            limit=args.rows,
            seq_len=256,
            max_tokens=4096,
            progress=False,
        )
        docs = perplexity(model, tokenizer, "builtin:python-docs-heldout", seq_len=256, max_tokens=4096, progress=False)
        result["perplexity_heldout_docs"] = docs.perplexity
        return result

    results = {"teacher": evaluate(teacher), "pruned, not distilled": evaluate(student)}
    for name, data in sources.items():
        config = short_distillation_config("/tmp/sdg-quality", args.steps, args.batch, args.max_length)
        model = copy.deepcopy(student).requires_grad_(True)
        trainer = DistillationTrainer(
            model=model, teacher_model=teacher, args=config, train_dataset=data, processing_class=tokenizer
        )
        trainer.train()
        results[name] = evaluate(model.eval())
        results[name]["train_tokens"] = trainer._total_train_tokens
        print(f"{name}: {trainer._total_train_tokens} training tokens", flush=True)
    print(
        f"\nSmolLM2-135M width student (hidden 432, MLP 768), {args.steps} steps × {args.batch} × {args.max_length} "
        f"packed tokens of distillation per data source; perplexity on Tiny Shakespeare (4096 tokens, seen by "
        f"neither); first {args.rows} rows per task; {time.time() - start:.0f} s in all"
    )
    print(results_table(results))
    print(
        "held-out documentation perplexity: "
        + ", ".join(f"{name} {r['perplexity_heldout_docs']:.2f}" for name, r in results.items())
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
