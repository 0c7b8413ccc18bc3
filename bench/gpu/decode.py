"""Prefill and decode throughput with a static KV cache, so that decode measures the model, not Python.

Decode runs ``new`` greedy steps at a fixed batch after a prompt. ``graph``: one eager decode step
(forward, argmax, next input) captured as a CUDA graph and replayed, no compiler involved.
``compiled``: the model's forward through ``torch.compile(mode="reduce-overhead")`` (Inductor kernels
and CUDA graphs), what transformers' own compiled generation does. On the CPU ``graph`` is the plain
eager loop.
"""

from __future__ import annotations

import inspect
import time

import torch
from workloads import Setup, random_ids, sync, timed

WARMUP_STEPS = 3


def _cache_keyword(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` in the model's forward (5.2x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _plain_forward(model):
    return getattr(model, "_minitron_original_forward", model.forward)


@torch.no_grad()
def prefill_tokens_per_second(setup: Setup, model, batch: int, seq: int) -> float:
    ids = random_ids(setup, batch, seq, seed=2)
    forward = _plain_forward(model)
    seconds, _ = timed(setup, lambda: forward(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=1, repeats=3)
    return batch * seq / seconds


@torch.no_grad()
def decode_tokens_per_second(setup: Setup, model, batch: int, prompt: int, new: int, mode: str) -> tuple[float, str]:
    """(tokens/s over ``new`` decode steps, how the step ran)."""
    from transformers import StaticCache

    forward = _plain_forward(model)
    keyword = _cache_keyword(model)
    cache = StaticCache(config=model.config, max_cache_len=prompt + 2 * WARMUP_STEPS + new + 2)
    ids = random_ids(setup, batch, prompt, seed=3)
    first = forward(input_ids=ids, use_cache=True, logits_to_keep=1, **{keyword: cache}).logits
    current = first[:, -1:].argmax(-1)
    how = "eager loop (no CUDA)"
    if mode == "compiled":
        compiled = torch.compile(forward, mode="reduce-overhead", dynamic=False)
        state = {"ids": current}

        def step():
            logits = compiled(input_ids=state["ids"], use_cache=True, logits_to_keep=1, **{keyword: cache}).logits
            state["ids"] = logits[:, -1:].argmax(-1)

        how = "torch.compile reduce-overhead"
    else:
        static = current.clone()

        def eager_step():
            logits = forward(input_ids=static, use_cache=True, logits_to_keep=1, **{keyword: cache}).logits
            static.copy_(logits[:, -1:].argmax(-1))

        step = eager_step
        if setup.cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # CUDA graphs want their work warmed up off the capturing stream
                for _ in range(WARMUP_STEPS):
                    eager_step()
            torch.cuda.current_stream().wait_stream(side)
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    eager_step()
                step, how = graph.replay, "CUDA graph of the eager step"
            except Exception as error:  # a host sync inside the step: measure the eager loop instead
                how = f"eager loop (graph capture failed: {type(error).__name__})"
    for _ in range(WARMUP_STEPS):
        step()
    sync(setup)
    start = time.perf_counter()
    for _ in range(new):
        step()
    sync(setup)
    return batch * new / (time.perf_counter() - start), how
