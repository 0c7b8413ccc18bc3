"""What the GPU benchmark measures: its sections, their rows and columns, sizes and time boxes.

Shared by the orchestrator (which imports no torch), the worker and the test, so a table always has
every row, measured or marked with why not.
"""

from __future__ import annotations

from dataclasses import dataclass

TFLOPS_BF16_H200 = 989.0  # dense bf16 peak of an H100/H200 SXM, the MFU denominator


@dataclass(frozen=True)
class Column:
    name: str
    format: str = "{}"  # applied to numbers; strings are shown as they are


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, str], ...]  # (key, label)
    cap: float  # seconds at full size
    tiny_cap: float  # seconds with --tiny


SECONDS = Column("seconds", "{:.3f}")
PEAK = Column("peak GiB", "{:.1f}")
PEAK_EXTRA = Column("peak extra GiB", "{:.2f}")
TOKENS = Column("tokens/s", "{:,.0f}")
STEP = Column("s/step", "{:.3f}")
NOTE = Column("note")


def ratio(name: str) -> Column:
    return Column(name, "{:.2f}×")


_STEP_ROWS = (
    ("trl", "TRL GKD loss (`generalized_jsd_loss`, β=0) on full bf16 logits"),
    ("ours", "hf_minitron, `logit_loss_backend=auto`"),
    ("liger", "hf_minitron, `logit_loss_backend=liger`"),
)
_STEP_COLUMNS = (TOKENS, STEP, PEAK, ratio("× TRL tokens/s"), ratio("× TRL memory"), Column("MFU", "{:.1%}"), NOTE)

SECTIONS = (
    Section(
        "kl",
        "Logit KL alone, forward + backward",
        (SECONDS, PEAK_EXTRA, ratio("× Liger time"), ratio("× Liger memory"), Column("loss", "{:.5f}"), NOTE),
        (
            ("reference", "fp32 full-logit log-softmax (`plain_logit_loss`, the project's reference)"),
            ("trl", "TRL `generalized_jsd_loss` (β=0), bf16 full logits"),
            ("liger_raw", "Liger `LigerFusedLinearJSDLoss(beta=0)`, chunk 4096"),
            ("chunked", "hf_minitron `chunked` (eager chunk, bf16 matmuls, fp32 softmax/accumulation)"),
            ("compiled", "hf_minitron `compiled` (auto's choice on CUDA)"),
            ("compiled_4096", "hf_minitron `compiled`, chunk 4096"),
            ("liger", "hf_minitron `liger` backend"),
        ),
        cap=90,
        tiny_cap=90,
    ),
    Section("step_1b", "Distillation step, 1.24B → 0.78B width pair", _STEP_COLUMNS, _STEP_ROWS, cap=45, tiny_cap=90),
    Section(
        "step_8b",
        "Distillation step, Llama-3.1-8B → 4.5B width (3072/9216) pair, gradient checkpointing",
        _STEP_COLUMNS,
        _STEP_ROWS,
        cap=55,
        tiny_cap=90,
    ),
    Section(
        "importance",
        "Importance estimation and reconstruction vs a plain forward, 8B",
        (SECONDS, TOKENS, ratio("× decoder forward"), ratio("× importance"), NOTE),
        (
            ("forward", "plain decoder forward (what importance runs, without hooks)"),
            ("importance", "`estimate_importance` (heads, neurons, channels, block importance)"),
            ("lm_forward", "causal-LM forward with full logits"),
            ("reconstruction", "`reconstruct_models`: least-squares re-fit of the width student, every layer"),
        ),
        cap=60,
        tiny_cap=90,
    ),
    Section(
        "prune",
        "Pruning the 8B in GPU memory",
        (SECONDS, Column("peak extra GiB", "{:.2f}"), Column("params", "{}"), Column("kept GiB", "{:.2f}"), NOTE),
        (
            ("width", "`prune_model` to hidden 3072, MLP 9216"),
            ("depth", "`prune_model` to 16 layers (block importance)"),
        ),
        cap=20,
        tiny_cap=90,
    ),
    Section(
        "inference",
        "Prefill and decode, teacher vs students (static KV cache)",
        (
            Column("params", "{}"),
            Column("prefill tok/s", "{:,.0f}"),
            ratio("prefill × teacher"),
            Column("decode tok/s (CUDA graph)", "{:,.0f}"),
            ratio("decode × teacher"),
            Column("decode tok/s (compiled)", "{:,.0f}"),
            ratio("compiled × teacher"),
            NOTE,
        ),
        (
            ("teacher", "Llama-3.1-8B shape (32 layers, 4096/14336)"),
            ("width", "width student (3072/9216)"),
            ("depth", "depth student (16 layers)"),
        ),
        cap=60,
        tiny_cap=90,
    ),
    Section(
        "step_options",
        "Options of the step, each on its own (1.24B → 0.78B pair, hf_minitron auto backend)",
        (TOKENS, STEP, PEAK, ratio("× base"), NOTE),
        (
            ("base", "base: batch 4 × 4096, causal SDPA, teacher bf16, no checkpointing"),
            ("packed_sdpa", "packed documents in one row (position_ids; SDPA with a document mask)"),
            ("teacher_fp32", "teacher kept in fp32"),
            ("grad_ckpt", "gradient checkpointing on the student"),
            ("packed_flex", "packed documents, `flex_attention` (block-sparse document mask)"),
            ("compiled_layers", "`compile_layers`: compiled decoder layers in both models"),
            ("liger_kernels", "Liger RMSNorm/SwiGLU/RoPE kernels in both models (last: Liger patches transformers)"),
        ),
        cap=75,
        tiny_cap=90,
    ),
)

SECTION_NAMES = tuple(s.name for s in SECTIONS)


def section(name: str) -> Section:
    return next(s for s in SECTIONS if s.name == name)


# Sizes of the workloads (per the issue) and their --tiny counterparts for a CPU smoke run.
FULL = dict(
    kl=dict(tokens=32768, vocab=128256, student=3072, teacher=4096, liger_chunk=4096),
    step=dict(batch=4, seq=4096, warmup=2, steps=3),
    importance=dict(samples=64, seq=4096, batch=8),
    prefill=dict(batch=8, seq=2048),
    decode=dict(batch=32, prompt=128, new=64),
)
TINY = dict(
    kl=dict(tokens=384, vocab=1000, student=64, teacher=96, liger_chunk=128),
    step=dict(batch=2, seq=64, warmup=1, steps=2),
    importance=dict(samples=4, seq=32, batch=2),
    prefill=dict(batch=2, seq=32),
    decode=dict(batch=4, prompt=8, new=4),
)
