"""GGUF exports run in llama.cpp (llama-cpp-python) against transformers: token ids, logits, generations.

The SmolLM2 teacher and a width-pruned student (hidden 432, MLP 768) are exported to F32, F16 and
Q8_0; each file is loaded in llama.cpp and compared with the transformers model it came from: the
token ids of every probe string, next-token top-1 agreement and mean KL per position, and whether
greedy continuations are identical. Needs ``pip install llama-cpp-python`` (builds from source).

    .venv/bin/python bench/gguf_llama_cpp.py [--generate 24]

(Not named llama_cpp.py: the script's folder comes first on the import path and would hide the package.)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from hf_minitron import PruningConfig, builtin_teacher, estimate_importance, prune_model
from hf_minitron.quantization import export_gguf
from hf_minitron.quantization.llama_cpp_check import (
    SAMPLE_PROMPTS,
    logit_agreement,
    probe_texts,
    tokenization_mismatches,
    with_smollm2_pre_tokenizer,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate", type=int, default=24, help="greedy tokens per prompt")
    args = parser.parse_args()
    teacher, tokenizer = builtin_teacher()
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there!"}], tokenize=False)
    texts = probe_texts(chat)
    reference = with_smollm2_pre_tokenizer(tokenizer)  # SmolLM2's own rules; see the function's note
    scores = estimate_importance(
        teacher, tokenizer, "builtin:python-docs", num_samples=8, seq_len=128, batch_size=4, progress=False
    )
    student = prune_model(copy.deepcopy(teacher), PruningConfig(hidden_size=432, intermediate_size=768), scores)
    print(
        "| model | GGUF | probe strings with identical ids | positions | top-1 agreement | mean KL | identical greedy |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for label, model in (("SmolLM2-135M teacher", teacher), ("width-pruned 432/768", student)):
            for kind in ("F32", "F16", "Q8_0"):
                path = export_gguf(model, Path(folder) / f"{kind}.gguf", kind, tokenizer=tokenizer, overwrite=True)
                mismatches = tokenization_mismatches(reference, path, texts)
                result = logit_agreement(model, tokenizer, path, [*SAMPLE_PROMPTS, chat], generate=args.generate)
                print(
                    f"| {label} | {kind} | {len(texts) - len(mismatches)}/{len(texts)} | {result.positions} "
                    f"| {100 * result.top1_agreement:.2f}% | {result.mean_kl:.2e} "
                    f"| {result.identical_generations}/{result.generations} |",
                    flush=True,
                )
                for text, ours, theirs in mismatches[:3]:
                    print(f"    {text!r}: transformers {ours} vs llama.cpp {theirs}")


if __name__ == "__main__":
    main()
