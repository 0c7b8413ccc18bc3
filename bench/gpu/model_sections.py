"""Worker sections about the models themselves: importance, pruning, prefill and decode."""

from __future__ import annotations

import copy
import time

import torch
from decode import decode_tokens_per_second, prefill_tokens_per_second
from protocol import Rows
from prune_memory import random_scores
from workloads import GIB, Memory, Setup, build, count, free, llama_config, shared_model, sync, timed

from hf_minitron import (
    CalibrationSet,
    PruningConfig,
    ReconstructionConfig,
    estimate_importance,
    prune_model,
    reconstruct_models,
)


def importance_section(setup: Setup, rows: Rows, sizes: dict) -> None:
    s = sizes["importance"]
    model = shared_model(setup, "8b")
    g = torch.Generator().manual_seed(4)
    samples = list(torch.randint(3, setup.vocab, (s["samples"], s["seq"]), generator=g))
    calibration = CalibrationSet(samples=samples, pad_token_id=0, description="random token ids")
    warmup = CalibrationSet(samples=samples[: s["batch"]], pad_token_id=0, description="warm-up")
    tokens = calibration.num_tokens

    @torch.no_grad()
    def forward_all(module, data):
        for batch in data.batches(s["batch"]):
            module(
                input_ids=batch["input_ids"].to(setup.device),
                attention_mask=batch["attention_mask"].to(setup.device),
                use_cache=False,
            )

    def importance(data):
        estimate_importance(model, calibration_data=data, batch_size=s["batch"], progress=False)

    runs = (
        ("forward", lambda data: forward_all(model.model, data)),
        ("importance", importance),
        ("lm_forward", lambda data: forward_all(model, data)),
    )
    measured = {}
    for row, run in runs:
        with rows.row(row):
            run(warmup)  # kernels, autotuning and (importance) the compiled reductions, outside the timing
            seconds, _ = timed(setup, lambda run=run: run(calibration), warmup=0, repeats=1)
            measured[row] = seconds
            rows.cells(row, **{"seconds": seconds, "tokens/s": tokens / seconds})
        free()
    with rows.row("reconstruction"):
        # The width student (random scores: the cost does not depend on which units go), re-fitted layer by
        # layer on the first quarter of the calibration tokens (still several times more tokens than the
        # widest fit has inputs), compared per token with the importance pass: the target is ≤ 2×. The
        # solves cost the same whatever the token count, so a quarter of the tokens overstates the ratio.
        width = llama_config(setup, "8b-width")
        config = PruningConfig(hidden_size=width.hidden_size, intermediate_size=width.intermediate_size)
        student = prune_model(copy.deepcopy(model), config, random_scores(model.config))
        samples = max(1, s["samples"] // 4)
        settings = ReconstructionConfig(num_samples=samples, batch_size=s["batch"])
        memory = Memory(setup)
        start = time.perf_counter()
        reconstruct_models(model, [student], calibration, config=settings, progress=False)
        sync(setup)
        seconds = time.perf_counter() - start
        used = samples * s["seq"]
        rows.cells("reconstruction", **{"seconds": seconds, "tokens/s": used / seconds})
        if "importance" in measured:
            per_token = (seconds / used) / (measured["importance"] / tokens)
            rows.cells("reconstruction", **{"× importance": per_token})
        shape = f"{width.hidden_size}/{width.intermediate_size}"
        note = f"width {shape} student, {samples} × {s['seq']} tokens, × importance per token; "
        rows.cells("reconstruction", note=note + f"peak extra {memory.extra:.1f} GiB")
        del student
    free()
    if "forward" in measured:
        for row, seconds in measured.items():
            rows.cells(row, **{"× decoder forward": seconds / measured["forward"]})
    rows.cells("forward", note=f"{s['samples']} × {s['seq']} tokens, batch {s['batch']}")


def prune_section(setup: Setup, rows: Rows, sizes: dict) -> None:
    base = shared_model(setup, "8b")
    scores = random_scores(base.config)
    width = llama_config(setup, "8b-width")
    depth = llama_config(setup, "8b-depth")
    targets = (
        ("width", PruningConfig(hidden_size=width.hidden_size, intermediate_size=width.intermediate_size)),
        ("depth", PruningConfig(num_hidden_layers=depth.num_hidden_layers)),
    )
    for row, config in targets:
        with rows.row(row):
            model = copy.deepcopy(base)
            before = count(model)
            memory = Memory(setup)
            start = time.perf_counter()
            prune_model(model, config, scores)
            sync(setup)
            seconds = time.perf_counter() - start
            kept = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
            rows.cells(
                row,
                **{
                    "seconds": seconds,
                    "peak extra GiB": memory.extra,
                    "params": f"{before} → {count(model)}",
                    "kept GiB": kept,
                },
            )
            del model
        free()


def inference_section(setup: Setup, rows: Rows, sizes: dict) -> None:
    pre, dec = sizes["prefill"], sizes["decode"]
    models = {}
    measured: dict[str, dict[str, float]] = {}
    makers = (("teacher", lambda: shared_model(setup, "8b")), ("width", lambda: build(setup, "8b-width").eval()))
    makers += (("depth", lambda: build(setup, "8b-depth").eval()),)
    for row, make in makers:
        with rows.row(row):
            model = models[row] = make()
            prefill = prefill_tokens_per_second(setup, model, pre["batch"], pre["seq"])
            decode, how = decode_tokens_per_second(setup, model, dec["batch"], dec["prompt"], dec["new"], "graph")
            measured[row] = {"prefill": prefill, "decode": decode}
            note = f"prefill {pre['batch']} × {pre['seq']}; decode batch {dec['batch']}, {how}"
            cells = {"params": count(model), "prefill tok/s": prefill, "decode tok/s (CUDA graph)": decode}
            rows.cells(row, **cells, note=note)
        free()
    teacher = measured.get("teacher")
    if teacher:
        for row, values in measured.items():
            rows.cells(
                row,
                **{
                    "prefill × teacher": values["prefill"] / teacher["prefill"],
                    "decode × teacher": values["decode"] / teacher["decode"],
                },
            )
    if not setup.cuda:
        for row in models:
            rows.cells(row, **{"decode tok/s (compiled)": "skipped: needs CUDA"})
        return
    compiled = {}
    for row, model in models.items():  # the slow part (compiling each model) last, as far as time allows
        with rows.row(row):
            rate, _ = decode_tokens_per_second(setup, model, dec["batch"], dec["prompt"], dec["new"], "compiled")
            compiled[row] = rate
            cells = {"decode tok/s (compiled)": rate}
            if "teacher" in compiled:
                cells["compiled × teacher"] = rate / compiled["teacher"]
            rows.cells(row, **cells)
        free()
