"""Generation throughput of the SmolLM2 teacher writing distillation data, at a few batch sizes.

Each batch size answers the same built-in seed prompts (chat template, sampling at temperature
0.7, top-p 0.95, up to --new-tokens new tokens each) through ``generate_distillation_data``,
so the figure includes everything the command does (tokenizing, padding, decoding, writing).

    .venv/bin/python bench/generation_throughput.py [--prompts 32] [--new-tokens 64] [--batch-sizes 1 4 16]
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from hf_minitron import builtin_teacher
    from hf_minitron.distillation_data import GenerationSettings, generate_distillation_data

    teacher, tokenizer = builtin_teacher()
    teacher.to(args.device)
    rates = {}
    for batch in args.batch_sizes:
        settings = GenerationSettings(
            max_new_tokens=args.new_tokens, batch_size=batch, shard_size=args.prompts, max_prompts=args.prompts
        )
        with tempfile.TemporaryDirectory() as folder:
            result = generate_distillation_data(
                teacher, output_dir=f"{folder}/data", settings=settings, tokenizer=tokenizer, progress=False
            )
        rates[batch] = result.tokens / result.seconds
        print(f"  batch {batch:>3}: {result.tokens} tokens in {result.seconds:.1f} s = {rates[batch]:.1f} tokens/s")
    base = rates[args.batch_sizes[0]]
    print(
        f"SmolLM2-135M-Instruct (fp32, {args.device}), {args.prompts} built-in prompts, ≤{args.new_tokens} new tokens: "
        + ", ".join(f"batch {b} {r / base:.2f}×" for b, r in rates.items())
        + f" the tokens/s of batch {args.batch_sizes[0]}"
    )


if __name__ == "__main__":
    main()
