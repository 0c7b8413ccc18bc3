"""GGUF exports run in llama.cpp (llama-cpp-python) against transformers: token ids, logits, generations.

SmolLM2 (the teacher, a width-pruned student with hidden 432 / MLP 768, and with --demo-students the
demo's width and depth shapes re-fitted; --student adds saved folders) and Gemma 3 270M (the teacher,
its SentencePiece tokenizer included) are exported to F32, F16 and Q8_0; each file is loaded in
llama.cpp and compared with the transformers model it came from: the token ids of every probe string,
next-token top-1 agreement and mean KL per position (over the sample prompts and --passages passages
of held-out documentation), and whether greedy continuations of the prompts are identical.
Needs ``pip install llama-cpp-python`` (builds from source); Gemma 3 also needs the built-in's packages.

    .venv/bin/python bench/gguf_llama_cpp.py [--models smollm2 gemma3] [--generate 24] [--demo-students]

(Not named llama_cpp.py: the script's folder comes first on the import path and would hide the package.)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from hf_minitron import (
    PruningConfig,
    build_calibration_set,
    builtin_teacher,
    estimate_importance,
    prune_model,
    reconstruct_models,
)
from hf_minitron.cli.demo import demo_recipe
from hf_minitron.data import iter_texts, row_prefix
from hf_minitron.loading import load_model_and_tokenizer
from hf_minitron.pruning.plan import block_lm_loss_sizes
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.llama_cpp_check import (
    SAMPLE_PROMPTS,
    logit_agreement,
    probe_texts,
    tokenization_mismatches,
    with_smollm2_pre_tokenizer,
)


def chat_text(tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return ""
    return tokenizer.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False)


def smollm2_models(args):
    teacher, tokenizer = builtin_teacher()
    scores = estimate_importance(
        teacher, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, batch_size=4, progress=False
    )
    student = prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), scores)
    models = [("SmolLM2-135M teacher", teacher), ("width-pruned 432/768", student)]
    if args.demo_students:
        models += demo_students(teacher, tokenizer)
    models += [(path, load_model_and_tokenizer(path, dtype=torch.float32)[0]) for path in args.student]
    # SmolLM2's own splitting rules are the reference for ids (see with_smollm2_pre_tokenizer's note).
    reference = with_smollm2_pre_tokenizer(tokenizer)
    return tokenizer, reference, models


def demo_students(teacher, tokenizer):
    """The demo recipe's students, calibrated and re-fitted as its recipe says (no distillation)."""
    recipe = demo_recipe()
    settings = recipe.calibration
    calibration = build_calibration_set(
        settings.data, tokenizer, num_samples=settings.num_samples, seq_len=settings.seq_len
    )
    scores = estimate_importance(
        teacher,
        calibration_data=calibration,
        block_lm_loss_sizes=block_lm_loss_sizes(teacher.config.num_hidden_layers, recipe.students.values()),
        block_search_samples=settings.block_search_samples,
        progress=False,
    )
    students = [(name, prune_model(copy.deepcopy(teacher), c, scores)) for name, c in recipe.students.items()]
    reconstruct_models(teacher, [s for _, s in students], calibration, config=recipe.reconstruction, progress=False)
    return [(f"demo {name} student, re-fitted", student) for name, student in students]


def held_out_passages(tokenizer, count: int, length: int) -> list[list[int]]:
    """``count`` passages of ``length`` tokens of held-out documentation (never calibrated on), each
    after a BOS where the tokenizer adds one (Gemma needs it)."""
    prefix, stream = row_prefix(tokenizer), []
    for text in iter_texts("builtin:python-docs-heldout"):
        stream += tokenizer(text, add_special_tokens=False).input_ids
        if len(stream) >= count * length:
            break
    return [prefix + stream[i * length : (i + 1) * length] for i in range(count)]


def gemma3_models(args):
    teacher, tokenizer = load_model_and_tokenizer("builtin:gemma3-270m", dtype=torch.float32)
    return tokenizer, tokenizer, [("Gemma 3 270M teacher", teacher)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=("smollm2", "gemma3"), default=["smollm2", "gemma3"])
    parser.add_argument("--types", nargs="+", default=["F32", "F16", "Q8_0"])
    parser.add_argument("--generate", type=int, default=24, help="greedy tokens per prompt")
    parser.add_argument("--embedding-type", default=None, help="GGUF type of token_embd / output (e.g. F16)")
    parser.add_argument("--passages", type=int, default=8, help="held-out passages scored (not continued)")
    parser.add_argument("--passage-len", type=int, default=128)
    parser.add_argument("--demo-students", action="store_true", help="add the demo's two shapes, re-fitted")
    parser.add_argument("--student", action="append", default=[], help="a saved SmolLM2 student folder")
    args = parser.parse_args()
    print(
        "| model | GGUF | probe strings with identical ids | positions | top-1 agreement | mean KL "
        "| identical greedy | export + check |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for which in args.models:
        tokenizer, reference, models = {"smollm2": smollm2_models, "gemma3": gemma3_models}[which](args)
        passages = held_out_passages(tokenizer, args.passages, args.passage_len) if args.passages else []
        chat = chat_text(tokenizer)
        texts = probe_texts(chat)
        prompts = [*SAMPLE_PROMPTS, chat] if chat else SAMPLE_PROMPTS
        with tempfile.TemporaryDirectory() as folder:
            for label, model in models:
                for kind in args.types:
                    start = time.perf_counter()
                    path = Path(folder) / f"{kind}.gguf"
                    export_gguf(
                        model, path, kind, tokenizer=tokenizer, overwrite=True, embedding_type=args.embedding_type
                    )
                    mismatches = tokenization_mismatches(reference, path, texts)
                    result = logit_agreement(model, tokenizer, path, prompts, generate=args.generate, passages=passages)
                    print(
                        f"| {label} | {kind} | {len(texts) - len(mismatches)}/{len(texts)} | {result.positions} "
                        f"| {100 * result.top1_agreement:.2f}% | {result.mean_kl:.2e} "
                        f"| {result.identical_generations}/{result.generations} "
                        f"| {time.perf_counter() - start:.0f} s |",
                        flush=True,
                    )
                    for text, ours, theirs in mismatches[:3]:
                        print(f"    {text!r}: transformers {ours} vs llama.cpp {theirs}")
                    path.unlink()


if __name__ == "__main__":
    main()
