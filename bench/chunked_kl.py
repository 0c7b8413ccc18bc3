"""Chunked vs plain logit KL, forward + backward, at Llama-3 vocabulary (128256) and 4096 tokens.

Targets: peak memory ratio ≤ 0.3, time ratio ≤ 1.1. Each variant runs in its own process so its
peak RSS (VmHWM, reset after setup) is its own; runs alternate to share the machine's noise.

    .venv/bin/python bench/chunked_kl.py [--tokens 4096] [--vocab 128256] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import gib, peak_rss_bytes, reset_peak_rss, rss_bytes


def measure(variant: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    import torch

    from hf_minitron.distillation.losses import chunked_logit_loss, plain_logit_loss

    torch.manual_seed(0)
    student_hidden = torch.randn(tokens, hidden, requires_grad=True)
    student_weight = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(tokens, hidden), torch.randn(vocab, hidden) * 0.02
    weights = torch.full((tokens,), 1.0 / tokens)

    def step():
        if variant == "chunked":
            loss = chunked_logit_loss(
                student_hidden, student_weight, teacher_hidden, teacher_weight, weights, chunk_size=chunk
            )
        else:
            loss = plain_logit_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, weights)
        loss.backward()
        student_hidden.grad = student_weight.grad = None
        return float(loss)

    step()  # warm-up (allocator, kernels)
    baseline = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    return {"variant": variant, "seconds": seconds, "extra_bytes": peak_rss_bytes() - baseline, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens, args.vocab, args.hidden, args.chunk)))
        return
    results = {"plain": [], "chunked": []}
    for _ in range(args.repeats):
        for variant in results:
            command = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--tokens",
                str(args.tokens),
                "--vocab",
                str(args.vocab),
                "--hidden",
                str(args.hidden),
                "--chunk",
                str(args.chunk),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[variant].append(json.loads(output.strip().splitlines()[-1]))
    summary = {
        v: {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "extra_bytes": statistics.median(r["extra_bytes"] for r in runs),
            "loss": runs[0]["loss"],
        }
        for v, runs in results.items()
    }
    print(
        f"logit KL forward+backward: {args.tokens} tokens, vocab {args.vocab}, hidden {args.hidden}, "
        f"chunk {args.chunk}, fp32, median of {args.repeats}"
    )
    for variant, s in summary.items():
        print(
            f"  {variant:<8} {s['seconds']:7.2f} s   peak extra memory {gib(s['extra_bytes'])}   loss {s['loss']:.6f}"
        )
    memory = summary["chunked"]["extra_bytes"] / summary["plain"]["extra_bytes"]
    speed = summary["chunked"]["seconds"] / summary["plain"]["seconds"]
    print(f"chunked / plain: peak memory {memory:.3f}× (target ≤ 0.3), time {speed:.3f}× (target ≤ 1.1)")


if __name__ == "__main__":
    main()
