"""Inference throughput of several models side by side: prefill and KV-cached decode tokens/s.

Models run in turn within each repeat (A B C A B C …) so machine noise hits all of them alike;
the median of the repeats is reported, with each model's speedup over the first (the teacher).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..tables import format_table
from .perplexity import input_device


@dataclass
class ThroughputSettings:
    prefill_batch: int = 4
    prefill_len: int = 512
    decode_batches: tuple[int, ...] = (1, 8)
    prompt_len: int = 16
    new_tokens: int = 128
    repeats: int = 3
    warmup: bool = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_ids(model, batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, model.config.vocab_size, (batch, length), generator=generator)


@torch.no_grad()
def _prefill_seconds(model, ids: torch.Tensor) -> float:
    device = input_device(model)
    ids = ids.to(device)
    _sync(device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False, logits_to_keep=1)  # only the last position's logits, as in serving
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def _decode_seconds(model, ids: torch.Tensor, new_tokens: int) -> float:
    device = input_device(model)
    ids = ids.to(device)
    _sync(device)
    start = time.perf_counter()
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    _sync(device)
    return time.perf_counter() - start


def benchmark_throughput(models: dict, settings: ThroughputSettings | None = None) -> dict:
    """{model name: {"prefill": tokens/s, "decode_b1": tokens/s, ..., "speedup": {...}}}, first model = 1.0×."""
    settings = settings or ThroughputSettings()
    for model in models.values():
        model.eval()
    tests = {"prefill": (settings.prefill_batch, settings.prefill_len)}
    tests.update({f"decode_b{b}": (b, settings.prompt_len) for b in settings.decode_batches})
    samples: dict[str, dict[str, list[float]]] = {name: {t: [] for t in tests} for name in models}
    for repeat in range(settings.repeats + int(settings.warmup)):
        for test, (batch, length) in tests.items():
            for name, model in models.items():
                ids = _random_ids(model, batch, length, seed=repeat)
                if test == "prefill":
                    seconds, tokens = _prefill_seconds(model, ids), batch * length
                else:
                    seconds, tokens = _decode_seconds(model, ids, settings.new_tokens), batch * settings.new_tokens
                if repeat >= int(settings.warmup):
                    samples[name][test].append(tokens / seconds)
    results = {
        name: {test: statistics.median(values) for test, values in by_test.items()} for name, by_test in samples.items()
    }
    reference = results[next(iter(results))]
    for by_test in results.values():
        by_test["speedup"] = {test: by_test[test] / reference[test] for test in tests}
    return results


def throughput_table(results: dict) -> str:
    tests = [t for t in next(iter(results.values())) if t != "speedup"]
    header = ["model", *(f"{t} tok/s" for t in tests)]
    rows = [header]
    for name, by_test in results.items():
        rows.append([name, *(f"{by_test[t]:.0f} ({by_test['speedup'][t]:.2f}×)" for t in tests)])
    return format_table(rows)
