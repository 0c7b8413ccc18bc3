"""Memory of one least-squares re-fit, above the statistics it solves from.

A re-fit keeps a layer's Gram matrix G (inputs², fp64) and cross products C (inputs × outputs) while
calibration tokens stream by; its solve then needs the Cholesky factor of the damped G (inputs² more)
and a few inputs × outputs matrices. Minitron's 4B width student of Llama-3.1-8B has 9216 MLP neurons,
whose ``down_proj`` fit is the largest of its layers: G alone is 0.63 GiB. This prints the peak memory
the solve adds over the memory held just before it, in GiB and as a multiple of G's size.

    .venv/bin/python bench/fit_memory.py [--inputs 9216] [--outputs 3072] [--tokens 2048] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron.reconstruction import LeastSquares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gib, peak_rss_bytes, reset_peak_rss, rss_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=9216)
    parser.add_argument("--outputs", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    problem = LeastSquares(args.inputs, args.outputs, False, device)
    for _ in range(0, args.tokens, 1024):
        x = torch.randn(1024, args.inputs, generator=generator, device=device)
        problem.add(x, torch.randn(1024, args.outputs, generator=generator, device=device))
    weight = torch.randn(args.outputs, args.inputs, generator=generator, device=device)
    del x
    gram_bytes = problem.gram.numel() * problem.gram.element_size()
    if device.type == "cuda":
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        held = rss_bytes()
        reset_peak_rss()
    start = time.perf_counter()
    problem.fit(weight, damping=0.1)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    added = peak - held
    print(
        f"{args.inputs} inputs, {args.outputs} outputs, {problem.tokens} tokens on {device}: G {gib(gram_bytes)}; "
        f"the solve adds {gib(added)} at its peak ({added / gram_bytes:.2f}× G) in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
