"""Importance estimation vs a plain forward over the same calibration batches (target ≤ 1.10×).

Both run the decoder over identical batches in the same process, interleaved; the only
difference is the hooks that record heads, neurons, channels and block importance.
The full causal-LM forward (with the LM head, as a user would call it) is shown too.

    .venv/bin/python bench/importance_overhead.py [--model builtin:smollm2-135m] [--batches 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from hf_minitron import build_calibration_set, estimate_importance, load_model_and_tokenizer
from hf_minitron.families import family_for, get_module

from common import interleaved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")
    calibration = build_calibration_set(
        "builtin:python-docs", tokenizer, seq_len=args.seq_len, num_samples=args.batches * args.batch_size
    )
    batches = list(calibration.batches(args.batch_size))
    decoder = get_module(model, family_for(model).decoder)

    def plain_decoder():
        for batch in batches:
            decoder(**batch, use_cache=False)

    def plain_causal_lm():
        for batch in batches:
            model(**batch, use_cache=False)

    def importance():
        estimate_importance(model, calibration_data=calibration, batch_size=args.batch_size, progress=False)

    plain_decoder()  # warm-up
    seconds = interleaved(
        {
            "plain decoder forward": plain_decoder,
            "plain causal-LM forward": plain_causal_lm,
            "estimate_importance": importance,
        },
        args.repeats,
    )
    tokens = calibration.num_tokens
    print(
        f"model {args.model}, {len(batches)} batches × {args.batch_size} × {args.seq_len} = {tokens} tokens, "
        f"median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    for name, value in seconds.items():
        print(f"  {name:<26} {value:7.2f} s  {tokens / value:8.0f} tokens/s")
    ratio = seconds["estimate_importance"] / seconds["plain decoder forward"]
    print(f"importance / plain decoder forward:  {ratio:.3f}×  (target ≤ 1.10×)")
    full = seconds["estimate_importance"] / seconds["plain causal-LM forward"]
    print(f"importance / plain causal-LM forward: {full:.3f}×")


if __name__ == "__main__":
    main()
