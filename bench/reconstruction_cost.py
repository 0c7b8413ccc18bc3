"""Least-squares reconstruction vs the importance pass, per calibration token (target on an 8B: ≤ 2×).

Over the same calibration tokens, in one process, interleaved:

- ``importance``: ``estimate_importance`` on the teacher (one forward pass with hooks);
- ``reconstruction``: ``reconstruct_models`` re-fitting every layer of a width student (attention
  output and MLP output projections, sequentially), the library's default;
- ``reconstruction, whole layers``: the same, running each student layer whole for its MLP fit and again
  to move its stream on (what the walk did before it computed a layer in parts from the activations its
  fits had already seen);
- ``reconstruction, full Gram``: the default, with every Gram matrix multiplied out in full instead of
  its upper triangle in row blocks (one block: what the fits did before; the same matrices, as the
  tests check). Narrow inputs (under 2048) are one block either way, so it differs only at 8B shapes.

Models: ``builtin:smollm2-135m`` (width student hidden 432, MLP 768, the recovery benchmark's half-size
shape) or ``llama-8b-layers``: randomly initialised decoder layers of Llama-3.1-8B's shape (hidden
4096, MLP 14336, 32 heads over 8 KV heads of 128; ``--layers`` of them, vocabulary 32000), pruned to
Minitron's 4B width shape (hidden 3072, MLP 9216). A layer's cost does not depend on how many there
are, so a few 8B-shaped layers show the 8B's per-token ratio; in fp32, where every product runs on the
same units, the ratio is one of arithmetic. The solves (a Cholesky factorisation per fit) cost the same
whatever the token count, so fewer tokens overstate the ratio.

    .venv/bin/python bench/reconstruction_cost.py [--model llama-8b-layers] [--samples 8] [--seq-len 1024]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron import (
    CalibrationSet,
    PruningConfig,
    ReconstructionConfig,
    build_calibration_set,
    estimate_importance,
    load_model_and_tokenizer,
    prune_model,
    reconstruct_models,
)
from hf_minitron.reconstruction import fits, least_squares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved

STUDENTS = {
    "builtin:smollm2-135m": PruningConfig(hidden_size=432, intermediate_size=768),
    "llama-8b-layers": PruningConfig(hidden_size=3072, intermediate_size=9216),
}


def eight_b_layers(layers: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        num_hidden_layers=layers,
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=tuple(STUDENTS), default="builtin:smollm2-135m")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of llama-8b-layers")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.model == "llama-8b-layers":
        teacher = eight_b_layers(args.layers)
        ids = torch.randint(3, 32000, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(1))
        calibration = CalibrationSet(samples=list(ids), pad_token_id=0, description="random token ids")
    else:
        teacher, tokenizer = load_model_and_tokenizer(args.model, dtype="float32")
        calibration = build_calibration_set(
            "builtin:python-docs", tokenizer, seq_len=args.seq_len, num_samples=args.samples
        )
    scores = estimate_importance(teacher, calibration_data=calibration, batch_size=args.batch_size, progress=False)
    student = prune_model(copy.deepcopy(teacher), STUDENTS[args.model], scores)
    settings = ReconstructionConfig(batch_size=args.batch_size)

    def importance():
        estimate_importance(teacher, calibration_data=calibration, batch_size=args.batch_size, progress=False)

    def reconstruction():
        reconstruct_models(teacher, [copy.deepcopy(student)], calibration, config=settings, progress=False)

    def reconstruction_whole_layers():
        check = fits.parts_match
        fits.parts_match = lambda *args: False  # the walk then runs each layer whole, as it did before
        try:
            reconstruction()
        finally:
            fits.parts_match = check

    def reconstruction_full_gram():
        blocks = least_squares.gram_row_blocks
        least_squares.gram_row_blocks = lambda size, columns=1024: [slice(0, size)]
        try:
            reconstruction()
        finally:
            least_squares.gram_row_blocks = blocks

    seconds = interleaved(
        {
            "importance": importance,
            "reconstruction": reconstruction,
            "reconstruction, whole layers": reconstruction_whole_layers,
            "reconstruction, full Gram": reconstruction_full_gram,
        },
        args.repeats,
    )
    tokens = calibration.num_tokens
    shape = STUDENTS[args.model]
    print(
        f"model {args.model}"
        + (f" ({args.layers} layers)" if args.model == "llama-8b-layers" else "")
        + f", width student {shape.hidden_size}/{shape.intermediate_size}, {args.samples} × {args.seq_len}"
        f" = {tokens} tokens, batch {args.batch_size}, median of {args.repeats}, torch threads"
        f" {torch.get_num_threads()}"
    )
    for name, value in seconds.items():
        ratio = value / seconds["importance"]
        print(f"  {name:<30} {value:8.2f} s  {tokens / value:8.0f} tokens/s  {ratio:5.2f}× importance")


if __name__ == "__main__":
    main()
