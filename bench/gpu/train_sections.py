"""Worker sections about training: the logit loss alone, the distillation step, and the step's options."""

from __future__ import annotations

import importlib.util

import torch
from plan import TFLOPS_BF16_H200
from protocol import Rows
from steps import gkd_loss, minitron_step, optimizer, packed_batch, padded_batch, prepare_pair, trl_step
from workloads import Setup, build, free, matmul_params, shared_model, timed

from hf_minitron.distillation.losses import auto_chunk_size, chunked_logit_loss, plain_logit_loss
from hf_minitron.distillation.speed import apply_liger_layer_kernels, compile_decoder_layers

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
NO_LIGER = "skipped: liger-kernel is not installed"
CPU_COMPILE = "skipped: compiling for the CPU takes longer than the --tiny run (runs on CUDA)"


def _ratio_cells(rows: Rows, measured: dict, base: str, pairs: dict[str, int]) -> None:
    """``pairs``: column name → index into the measured tuples; each row gets value / base's value."""
    if base not in measured:
        return
    for row, values in measured.items():
        ratios = {column: values[i] / measured[base][i] for column, i in pairs.items() if measured[base][i] > 0}
        rows.cells(row, **ratios)


def kl_section(setup: Setup, rows: Rows, sizes: dict) -> None:
    s = sizes["kl"]
    n, vocab, dev = s["tokens"], s["vocab"], setup.device
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(setup.dtype)

    student_hidden = randn(n, s["student"]).requires_grad_()
    student_weight = randn(vocab, s["student"], scale=0.02).requires_grad_()
    teacher_hidden, teacher_weight = randn(n, s["teacher"]), randn(vocab, s["teacher"], scale=0.02)
    weights = torch.tensor(1.0 / n, device=dev).expand(n)
    measured: dict[str, tuple[float, float]] = {}

    def run(row: str, loss_fn, params=(student_hidden, student_weight), warmup=1, note=""):
        last = {}

        def once():
            loss = loss_fn()
            loss.backward()
            last["loss"] = float(loss.detach())
            for p in params:
                p.grad = None

        with rows.row(row):
            seconds, memory = timed(setup, once, warmup=warmup, repeats=3)
            measured[row] = (seconds, memory.extra)
            rows.cells(row, **{"seconds": seconds, "peak extra GiB": memory.extra, "loss": last["loss"], "note": note})

    def reference():
        inputs = [t.detach().float() for t in (student_hidden, student_weight, teacher_hidden, teacher_weight)]
        inputs[0].requires_grad_()
        inputs[1].requires_grad_()
        run("reference", lambda: plain_logit_loss(*inputs, weights), params=inputs[:2])

    reference()  # its fp32 copies are gone when it returns
    free()
    with rows.row("trl"):
        jsd = gkd_loss()

        def trl_loss():
            with torch.no_grad():
                teacher_logits = teacher_hidden @ teacher_weight.t()
            student_logits = student_hidden @ student_weight.t()
            labels = torch.zeros(1, n, dtype=torch.long, device=dev)  # every token scored: a mean over tokens
            return jsd(student_logits[None], teacher_logits[None], labels=labels, beta=0.0)

        run("trl", trl_loss)
    free()
    chunk = auto_chunk_size(vocab, dev)

    def ours(backend: str, chunk_size: int | None = None):
        stats = {}

        def loss():
            return chunked_logit_loss(
                student_hidden, student_weight, teacher_hidden, teacher_weight, weights,
                backend=backend, chunk_size=chunk_size, stats=stats,
            )  # fmt: skip

        return loss, stats

    loss, stats = ours("chunked")
    run("chunked", loss, note=f"chunk {chunk}")
    for row, size in (("compiled", None), ("compiled_4096", 4096 if not setup.tiny else 256)):
        if not setup.cuda:
            rows.status(row, CPU_COMPILE)
            continue
        loss, stats = ours("compiled", size)
        run(row, loss, warmup=2, note=f"chunk {size or chunk}")
        if stats.get("backend") != "compiled":
            rows.cells(row, note=f"ran as {stats.get('backend')}: compiling failed (see log)")
    if HAS_LIGER:
        with rows.row("liger_raw"):
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

            liger = LigerFusedLinearJSDLoss(
                weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0, compiled=setup.cuda, chunk_size=s["liger_chunk"]
            )
            targets = torch.zeros(n, dtype=torch.long, device=dev)
            run(
                "liger_raw",
                lambda: liger(student_hidden, student_weight, teacher_hidden, teacher_weight, targets),
                warmup=2,
                note=f"chunk {s['liger_chunk']}",
            )
        loss, stats = ours("liger")
        run("liger", loss, warmup=2, note=f"chunk {chunk}")
    else:
        rows.status("liger_raw", NO_LIGER)
        rows.status("liger", NO_LIGER)
    _ratio_cells(rows, measured, "liger_raw", {"× Liger time": 0, "× Liger memory": 1})


def _step_rows(setup: Setup, rows: Rows, teacher, student, batch: dict, steps: dict, backends) -> dict:
    """Time TRL's and hf_minitron's steps on one pair; returns row → (tokens/s, peak GiB)."""
    tokens = batch["inputs"]["input_ids"].numel()
    flops_per_token = 6 * matmul_params(student) + 2 * matmul_params(teacher)
    measured = {}
    for row, backend in backends:
        if backend == "liger" and not HAS_LIGER:
            rows.status(row, NO_LIGER)
            continue
        with rows.row(row):
            opt, stats = optimizer(setup, student), {}
            if backend is None:
                loss_fn = gkd_loss()

                def step(opt=opt, loss_fn=loss_fn):
                    trl_step(teacher, student, opt, batch, loss_fn)
            else:

                def step(opt=opt, backend=backend, stats=stats):
                    minitron_step(teacher, student, opt, batch, backend, stats)

            seconds, memory = timed(setup, step, warmup=steps["warmup"], repeats=steps["steps"])
            rate = tokens / seconds
            measured[row] = (rate, memory.peak)
            cells = {"tokens/s": rate, "s/step": seconds, "peak GiB": memory.peak}
            if setup.cuda:
                cells["MFU"] = rate * flops_per_token / (TFLOPS_BF16_H200 * 1e12)
            if backend is not None:
                chunk = auto_chunk_size(student.config.vocab_size, setup.device)
                cells["note"] = f"backend {stats.get('backend')}, chunk {chunk}"
            rows.cells(row, **cells)
            del opt
        free()
    return measured


STEP_BACKENDS = (("trl", None), ("ours", "auto"), ("liger", "liger"))


def step_section(setup: Setup, rows: Rows, sizes: dict, teacher_shape: str, student_shape: str, checkpointing: bool):
    teacher = shared_model(setup, teacher_shape) if teacher_shape == "8b" else build(setup, teacher_shape)
    student = build(setup, student_shape)
    if checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prepare_pair(teacher, student)
    s = sizes["step"]
    batch = padded_batch(setup, s["batch"], s["seq"])
    measured = _step_rows(setup, rows, teacher, student, batch, s, STEP_BACKENDS)
    _ratio_cells(rows, measured, "trl", {"× TRL tokens/s": 0, "× TRL memory": 1})


def step_1b_section(setup, rows, sizes):
    step_section(setup, rows, sizes, "1b", "1b-width", checkpointing=False)


def step_8b_section(setup, rows, sizes):
    step_section(setup, rows, sizes, "8b", "8b-width", checkpointing=True)


def _set_attention(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def step_options_section(setup: Setup, rows: Rows, sizes: dict) -> None:
    s = sizes["step"]
    teacher, student = build(setup, "1b"), build(setup, "1b-width")
    prepare_pair(teacher, student)
    padded, packed = padded_batch(setup, s["batch"], s["seq"]), packed_batch(setup, s["batch"], s["seq"])
    measured = {}

    def measure(row, teacher, student, batch, note=""):
        got = _step_rows(setup, rows, teacher, student, batch, s, ((row, "auto"),))
        measured.update(got)
        if note:
            rows.cells(row, note=note)

    measure("base", teacher, student, padded)
    measure("packed_sdpa", teacher, student, packed, note=f"{len(packed['inputs']['cu_seq_lens_q']) - 1} documents")
    with rows.row("teacher_fp32"):
        fp32_teacher = build(setup, "1b", dtype=torch.float32)
        prepare_pair(fp32_teacher, student)
        measure("teacher_fp32", fp32_teacher, student, padded)
        del fp32_teacher
        free()
    with rows.row("grad_ckpt"):
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            measure("grad_ckpt", teacher, student, padded, note="non-reentrant")
        finally:
            student.gradient_checkpointing_disable()
    if setup.cuda:
        with rows.row("packed_flex"):
            for model in (teacher, student):
                _set_attention(model, "flex_attention")
            try:
                measure("packed_flex", teacher, student, packed, note="compile time in warm-up, not timed")
            finally:
                for model in (teacher, student):
                    _set_attention(model, "sdpa")
    else:
        rows.status("packed_flex", CPU_COMPILE)
    del teacher, student
    free()
    # Compiled layers and Liger's kernels change the models in place (Liger also patches transformers'
    # Llama module): each gets a fresh pair, and Liger comes last.
    if setup.cuda:
        with rows.row("compiled_layers"):
            teacher, student = build(setup, "1b"), build(setup, "1b-width")
            compile_decoder_layers(teacher)
            compile_decoder_layers(student)
            prepare_pair(teacher, student)
            measure("compiled_layers", teacher, student, padded, note="compile time in warm-up, not timed")
            del teacher, student
            free()
    else:
        rows.status("compiled_layers", CPU_COMPILE)
    if HAS_LIGER and setup.cuda:
        with rows.row("liger_kernels"):
            teacher, student = build(setup, "1b"), build(setup, "1b-width")
            apply_liger_layer_kernels(teacher)
            apply_liger_layer_kernels(student)
            prepare_pair(teacher, student)
            measure("liger_kernels", teacher, student, padded)
    else:
        rows.status("liger_kernels", NO_LIGER if not HAS_LIGER else "skipped: Liger's Triton kernels need CUDA")
    _ratio_cells(rows, measured, "base", {"× base": 0})
