"""General knowledge kept: which everyday facts a pruned student still completes as its teacher does.

Held-out perplexity on one corpus says little about what pruning takes away elsewhere: a student can
score well on Python documentation and have forgotten that Paris is the capital of France. This
bench gives the built-in SmolLM2-135M-Instruct teacher short factual prompts ("The capital of Japan
is"), keeps those whose greedy 8-token continuation holds the expected word, and counts how many of
them each student still answers the same way, beside its perplexity on held-out documentation. It
also prints each student's greedy continuation of two story openings ("Once upon a time").

Students: each shape of ``--shapes``, pruned with activation importance from the calibration text,
then left as pruned or re-fitted by least squares (``--variants``, ReconstructionConfig settings).
No distillation: this is what pruning and the re-fit alone keep. ``--models`` scores saved folders
instead (a demo run's distilled students, say), with no pruning at all.

    .venv/bin/python bench/knowledge.py                                  # documentation alone
    .venv/bin/python bench/knowledge.py --calibration "docs|prompts" --shapes "width MLP 1280,depth 26"
    .venv/bin/python bench/knowledge.py --calibration "docs|generated"   # half the teacher's own answers
    .venv/bin/python bench/knowledge.py --models minitron-demo/models/SmolLM2-Minitron-Demo-Width-Base

Writes ``knowledge.md`` and ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron import (
    PruningConfig,
    ReconstructionConfig,
    build_calibration_set,
    builtin_teacher,
    estimate_importance,
    prune_model,
    reconstruct_models,
)
from hf_minitron.data import iter_texts, prompt_ids
from hf_minitron.evaluation.perplexity import perplexity
from hf_minitron.pruning.config import NEURON_SELECTIONS
from hf_minitron.pruning.plan import block_lm_loss_sizes
from hf_minitron.shapes import model_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_text import PROMPTS, interleave, mixed_texts, teacher_written, with_teacher_answers

# (prompt, a word the right answer contains); prompts the teacher itself gets wrong are left out.
FACTS = (
    ("The capital of France is", "Paris"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Spain is", "Madrid"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("Water boils at", "100"),
    ("The chemical symbol for gold is", "Au"),
    ("The first president of the United States was", "Washington"),
    ("Romeo and Juliet was written by", "Shakespeare"),
    ("The Mona Lisa was painted by", "Leonardo"),
    ("The tallest mountain in the world is", "Everest"),
    ("The largest ocean on Earth is the", "Pacific"),
    ("The currency of Japan is the", "yen"),
    ("The planet closest to the Sun is", "Mercury"),
    ("The freezing point of water is", "0"),
    ("The longest river in Africa is the", "Nile"),
    ("Albert Einstein developed the theory of", "relativ"),
    ("The opposite of hot is", "cold"),
    ("A week has seven", "days"),
)
SHAPES = {
    "width 540/1152": PruningConfig(hidden_size=540, intermediate_size=1152),
    "width MLP 1280": PruningConfig(intermediate_size=1280),
    # Other ways to about seven eighths: a third of the query heads with fewer neurons; fewer channels.
    "width heads 6 MLP 1408": PruningConfig(num_attention_heads=6, intermediate_size=1408),
    "width hidden 504": PruningConfig(hidden_size=504),
    "depth 23": PruningConfig(num_hidden_layers=23, layer_selection="lm_loss"),
    "depth 26": PruningConfig(num_hidden_layers=26, layer_selection="lm_loss"),
    # The same depths with the layers of lowest 1 - cos(input, output), wherever they are.
    "depth 23 scattered": PruningConfig(num_hidden_layers=23, layer_selection="block_importance"),
    "depth 26 scattered": PruningConfig(num_hidden_layers=26, layer_selection="block_importance"),
}
VARIANTS = {
    "pruned": None,
    "re-fit": ReconstructionConfig(),
    "re-fit (changed layers)": ReconstructionConfig(layers="changed"),
    # Pulled ten times harder towards the pruned weights.
    "re-fit (changed layers; damping 1)": ReconstructionConfig(layers="changed", damping=1.0),
}
# Story openings: whether a student still continues them as a story is printed, not scored.
STORY_PROMPTS = ("Once upon a time", "Once upon a time, there was")


# Calibration text: the demo's documentation; with the dolly pairs of ../shared/data (not on a user's
# machine); with the library's built-in everyday prompts, text by text (the long documentation topics
# then hold most tokens) or as a mixture of half the samples each; or those prompts alone. ``docs|generated``
# (built in main) alternates documentation samples with the teacher's own answers to the prompts;
# ``docs|prompts|generated`` takes a third each of documentation, prompts and those answers, as the demo.
CALIBRATIONS = {
    "docs": lambda: "builtin:python-docs",
    "mixed": mixed_texts,
    "docs+prompts": lambda: interleave(list(iter_texts("builtin:python-docs")), list(iter_texts(PROMPTS))),
    "docs|prompts": lambda: {"builtin:python-docs": 0.5, PROMPTS: 0.5},
    "prompts": lambda: PROMPTS,
    "docs|generated": None,
    "docs|prompts|generated": None,
}


def answers(model, tokenizer, prompts) -> list[str]:
    """Greedy 8-token continuations, one prompt at a time (no padding to get wrong)."""
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :]))
    return texts


def story_openings(model, tokenizer) -> list[str]:
    """Greedy 20-token continuations of the story openings."""
    texts = []
    for prompt in STORY_PROMPTS:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)])
        out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids.shape[1] :]))
    return texts


def facts_answered(model, tokenizer, facts) -> list[str]:
    replies = answers(model, tokenizer, [prompt for prompt, _ in facts])
    return [word for (_, word), reply in zip(facts, replies, strict=True) if word.lower() in reply.lower()]


def score_folder(path: Path, tokenizer, known, held_out) -> dict:
    """Facts kept, held-out perplexity and story openings of a saved model (the teacher's tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    kept = facts_answered(model, tokenizer, known)
    row = {"model": str(path), "ppl_docs": held_out(model), "facts": kept, "stories": story_openings(model, tokenizer)}
    print(f"{path}: {len(kept)}/{len(known)} {kept}, ppl {row['ppl_docs']:.2f}\n  {row['stories']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", choices=tuple(CALIBRATIONS), default="docs")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--neuron-selection", choices=NEURON_SELECTIONS, default="energy")
    parser.add_argument("--out", default="bench/out/knowledge")
    parser.add_argument("--models", default=None, help="comma-separated model folders to score instead of pruning")
    args = parser.parse_args()
    shapes = {name: replace(SHAPES[name], neuron_selection=args.neuron_selection) for name in args.shapes.split(",")}
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.time()

    teacher, tokenizer = builtin_teacher()
    known = [(p, w) for (p, w) in FACTS if w in facts_answered(teacher, tokenizer, [(p, w)])]

    def held_out(model) -> float:
        source = "builtin:python-docs-heldout"
        return perplexity(model, tokenizer, source, seq_len=256, max_tokens=4096, progress=False).perplexity

    results = {"calibration": args.calibration, "teacher": {"ppl_docs": held_out(teacher), "facts": len(known)}}
    results["facts"] = [word for _, word in known]
    print(f"teacher: {len(known)}/{len(FACTS)} facts, docs ppl {results['teacher']['ppl_docs']:.2f}", flush=True)

    if args.models:
        results["students"] = [score_folder(Path(path), tokenizer, known, held_out) for path in args.models.split(",")]
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return

    if args.calibration == "docs|generated":
        count = args.calibration_samples - args.calibration_samples // 2
        docs = build_calibration_set("builtin:python-docs", tokenizer, num_samples=count, seq_len=256)
        calibration = with_teacher_answers(docs, args.calibration_samples, teacher, tokenizer, out)
    else:
        if args.calibration == "docs|prompts|generated":
            teacher_written(teacher, tokenizer, out)  # into out/generated, read back as the demo reads it
            text = {"builtin:python-docs": 0.34, PROMPTS: 0.33, str(out / "generated"): 0.33}
        else:
            text = CALIBRATIONS[args.calibration]()
        calibration = build_calibration_set(text, tokenizer, num_samples=args.calibration_samples, seq_len=256)
    scores = estimate_importance(
        teacher,
        calibration_data=calibration,
        block_lm_loss_sizes=block_lm_loss_sizes(teacher.config.num_hidden_layers, shapes.values()),
        block_search_samples=8,
        progress=False,
    )
    base = model_shape(teacher).non_embedding_params

    rows = results["students"] = []
    for shape, config in shapes.items():
        for variant, reconstruction in variants.items():
            student = prune_model(copy.deepcopy(teacher), config, scores)
            if reconstruction is not None:
                reconstruct_models(teacher, [student], calibration, config=reconstruction, progress=False)
            kept = facts_answered(student, tokenizer, known)
            row = {
                "shape": shape,
                "variant": variant,
                "params": model_shape(student).non_embedding_params / base,
                "ppl_docs": held_out(student),
                "facts": kept,
                "stories": story_openings(student, tokenizer),
            }
            rows.append(row)
            print(f"{shape} {variant}: {len(kept)}/{len(known)} {kept}, ppl {row['ppl_docs']:.2f}", flush=True)
            print(f"  {row['stories']}", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    lines = [
        f"Calibration: {args.calibration} ({args.calibration_samples} × 256 tokens). Teacher: "
        f"{len(known)} facts, held-out docs ppl {results['teacher']['ppl_docs']:.2f}.",
        "",
        "| shape | non-emb. params | student | facts kept | held-out docs ppl |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {100 * row['params']:.0f}% | {row['variant']} | "
            f"{len(row['facts'])}/{len(known)} | {row['ppl_docs']:.2f} |"
        )
    (out / "knowledge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n{time.time() - start:.0f} s; wrote {out}/knowledge.md and results.json")


if __name__ == "__main__":
    main()
