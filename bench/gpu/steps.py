"""One distillation training step three ways: TRL's GKD loss on full logits, and hf_minitron's distillation
forward (any logit-loss backend). Each is teacher forward (no grad) + student forward/backward + AdamW."""

from __future__ import annotations

import torch
from workloads import Setup, random_ids

from hf_minitron.distillation.forward import StudentRequest, TeacherRequest, enable_distillation_forward


def gkd_loss():
    """TRL's ``generalized_jsd_loss`` (the GKD trainer's loss on full logits)."""
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


def padded_batch(setup: Setup, batch: int, seq: int, seed: int = 0) -> dict:
    """Full rows of random tokens: every position after the first is scored."""
    ids = random_ids(setup, batch, seq, seed=seed)
    return {"inputs": {"input_ids": ids}, "labels": ids.clone()}


def packed_batch(setup: Setup, batch: int, seq: int, seed: int = 0) -> dict:
    """The same number of tokens as ``padded_batch``, as documents packed into one row the way TRL's
    padding-free collator hands them over: position_ids restart per document, each document's first
    token is unscored, and cu_seq_lens / max_length mark the documents for varlen kernels."""
    total = batch * seq
    g = torch.Generator().manual_seed(seed)
    lengths, left = [], total
    while left > 0:
        n = min(left, int(torch.randint(seq // 8, seq // 2 + 1, (1,), generator=g)))
        lengths.append(n)
        left -= n
    ids = random_ids(setup, 1, total, seed=seed)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).to(setup.device)
    labels = ids.clone()
    labels[position_ids == 0] = -100
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=setup.device)
    inputs = {
        "input_ids": ids,
        "position_ids": position_ids,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }
    return {"inputs": inputs, "labels": labels}


def optimizer(setup: Setup, model):
    kwargs = {"fused": True} if setup.cuda else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=1e-5, **kwargs)


def trl_step(teacher, student, opt, batch, loss_fn):
    ids, labels = batch["inputs"]["input_ids"], batch["labels"]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids).logits
    student_logits = student(input_ids=ids).logits
    loss = loss_fn(
        student_logits=student_logits[:, :-1],
        teacher_logits=teacher_logits[:, :-1],
        labels=labels[:, 1:],
        beta=0.0,
        temperature=1.0,
    )
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def minitron_step(teacher, student, opt, batch, backend: str, stats: dict):
    """hf_minitron's step as the DistillationTrainer runs it (cross-entropy logged, as by default)."""
    inputs, labels = batch["inputs"], batch["labels"]
    with torch.no_grad():
        teacher_outputs = teacher(**inputs, distillation=TeacherRequest())
    request = StudentRequest(
        teacher=teacher_outputs,
        labels=labels,
        num_items=(labels[:, 1:] != -100).sum(),
        track_ce=True,
        backend=backend,
    )
    loss = student(**inputs, distillation=request).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    stats.update(backend=request.stats.get("backend"))
    return loss


def prepare_pair(teacher, student) -> None:
    teacher.eval().requires_grad_(False)
    student.train()
    enable_distillation_forward(teacher)
    enable_distillation_forward(student)
