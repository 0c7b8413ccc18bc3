"""Models, batches, timing and memory for the GPU benchmark's worker (random init, no downloads).

Timing synchronises the device around each measured call; memory is PyTorch's allocator peak on
CUDA and the process's peak RSS on the CPU (the --tiny smoke run).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import peak_rss_bytes, reset_peak_rss, rss_bytes

GIB = 2**30


def _shape(hidden: int, intermediate: int, layers: int, head_dim: int, tied: bool) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        head_dim=head_dim,
        tie_word_embeddings=tied,
    )


# Llama-3.2-1B and Llama-3.1-8B shapes and the width / depth students of the issue; toy ones for --tiny.
SHAPES = {
    "1b": _shape(2048, 8192, 16, 64, tied=True),
    "1b-width": _shape(1536, 6144, 16, 64, tied=True),
    "8b": _shape(4096, 14336, 32, 128, tied=False),
    "8b-width": _shape(3072, 9216, 32, 128, tied=False),
    "8b-depth": _shape(4096, 14336, 16, 128, tied=False),
}
TINY_SHAPES = {
    "1b": _shape(64, 128, 2, 16, tied=True),
    "1b-width": _shape(48, 96, 2, 16, tied=True),
    "8b": _shape(96, 192, 4, 16, tied=False),
    "8b-width": _shape(64, 128, 4, 16, tied=False),
    "8b-depth": _shape(96, 192, 2, 16, tied=False),
}


@dataclass
class Setup:
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    vocab: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_setup(tiny: bool) -> Setup:
    """The GPU when there is one (--tiny too: a quick check of the whole script there), else the CPU, where
    models run in fp32 (bf16 matmuls are slow on most CPUs)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    return Setup(
        tiny=tiny, device=device, dtype=torch.bfloat16 if cuda else torch.float32, vocab=1000 if tiny else 128256
    )


def llama_config(setup: Setup, shape: str) -> LlamaConfig:
    dims = (TINY_SHAPES if setup.tiny else SHAPES)[shape]
    heads, kv_heads = (4, 2) if setup.tiny else (32, 8)
    return LlamaConfig(
        vocab_size=setup.vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        use_cache=False,
        **dims,
    )


def build(setup: Setup, shape: str, dtype: torch.dtype | None = None):
    """A randomly initialised Llama of ``shape``, created directly on the device."""
    config = llama_config(setup, shape)
    config._attn_implementation = "sdpa"
    with torch.device(setup.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or setup.dtype)
    return model.to(setup.device)


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (its lookup is free);
    a tied embedding counts once, as the LM head."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return total if tied else total - embedding.numel()


def count(model) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def random_ids(setup: Setup, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, setup.vocab, shape, generator=g).to(setup.device)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(setup: Setup) -> None:
    if setup.cuda:
        torch.cuda.synchronize()


class Memory:
    """Peak memory over a stretch of work: absolute, and above what was in use when it started."""

    def __init__(self, setup: Setup):
        self.setup = setup
        sync(setup)
        if setup.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            self.start = rss_bytes()

    @property
    def peak(self) -> float:
        sync(self.setup)
        return (torch.cuda.max_memory_allocated() if self.setup.cuda else peak_rss_bytes()) / GIB

    @property
    def extra(self) -> float:
        return max(0.0, self.peak - self.start / GIB)  # RSS on the CPU can shrink below the start


def timed(setup: Setup, fn, warmup: int, repeats: int) -> tuple[float, Memory]:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup``, and the memory of the measured runs."""
    for _ in range(warmup):
        fn()
    sync(setup)
    memory = Memory(setup)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(setup)
        times.append(time.perf_counter() - start)
    return statistics.median(times), memory


_SHARED: dict[str, torch.nn.Module] = {}


def shared_model(setup: Setup, shape: str):
    """One instance per worker of a model several sections use (the 8B teacher), frozen, in eval mode."""
    if shape not in _SHARED:
        _SHARED[shape] = build(setup, shape).eval().requires_grad_(False)
    return _SHARED[shape]
