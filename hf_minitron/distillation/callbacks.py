"""TrainerCallbacks for distillation; each also works with a plain transformers/TRL Trainer."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import MinitronError
from ..nll import chunked_nll

COMPONENTS = ("loss", "kl", "ce", "intermediate", "alpha", "grad_norm", "learning_rate")


class NonFiniteLossError(MinitronError):
    """Training produced a NaN or infinite loss and was stopped."""


class LossComponentsCallback(TrainerCallback):
    """Adds tokens/s to every training log and writes each log's loss components to a JSONL file.

    Components appear when the trainer logs them (DistillationTrainer logs kl, ce,
    intermediate and alpha); tokens/s comes from the ``num_tokens`` count TRL trainers log.
    """

    def __init__(self, filename: str = "distillation_log.jsonl"):
        self.filename = filename
        self.history: list[dict] = []
        self._last: tuple[float, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), None)
        path = Path(args.output_dir or ".") / self.filename
        if state.is_world_process_zero and args.output_dir and path.is_file():
            # A resumed run continues the log from its checkpoint's step; lines logged after that
            # checkpoint (by the process that stopped) would otherwise appear twice.
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step(line) <= state.global_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:  # evaluation and end-of-training summaries
            return
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        record = {"step": state.global_step, **{k: logs[k] for k in COMPONENTS if k in logs}}
        if tokens is not None and self._last is not None and self._last[1] is not None and now > self._last[0]:
            record["tokens_per_second"] = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)
        self.history.append(record)
        if state.log_history and "tokens_per_second" in record:
            state.log_history[-1]["tokens_per_second"] = record["tokens_per_second"]
        if state.is_world_process_zero and args.output_dir:
            path = Path(args.output_dir) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut short by the kill


def last_checkpoint_before(output_dir: str, step: int) -> Path | None:
    checkpoints = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-")[-1]
        if suffix.isdigit() and int(suffix) < step:
            checkpoints.append((int(suffix), path))
    return max(checkpoints)[1] if checkpoints else None


class NonFiniteLossCallback(TrainerCallback):
    """Stops training with a clear message when the logged loss or gradient norm is NaN or infinite.

    The error is raised before anything further is saved, so the last checkpoint on disk is
    the last good one; the message names it.
    """

    @staticmethod
    def fail(args, state, values: dict):
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in values.items() if _is_number(v))
        checkpoint = last_checkpoint_before(args.output_dir, state.global_step + 1) if args.output_dir else None
        where = (
            f"the last good checkpoint is {checkpoint}; resume from it with a lower learning rate"
            if checkpoint
            else "no checkpoint was saved before it; restart with a lower learning rate"
        )
        raise NonFiniteLossError(
            f"Training stopped at step {state.global_step}: the loss is not finite ({shown})",
            "a NaN or infinite loss would corrupt the weights from here on",
            where + " (or more warm-up, gradient clipping, or fp32)",
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        bad = {k: v for k, v in logs.items() if k in ("loss", "grad_norm") and _is_number(v) and not math.isfinite(v)}
        if bad:
            self.fail(args, state, logs)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1)


class TeacherGapCallback(TrainerCallback):
    """At each evaluation, the student's and the teacher's LM loss on the eval set, and their gap.

    The teacher's loss is computed once. Results go into the evaluation metrics and the log history.
    """

    def __init__(self, teacher):
        self.teacher = teacher
        self.teacher_loss: float | None = None

    @torch.no_grad()
    def on_evaluate(self, args, state, control, model=None, eval_dataloader=None, metrics=None, **kwargs):
        if model is None or eval_dataloader is None:
            return
        was_training = model.training
        model.eval()
        student_loss = labelled_lm_loss(model, eval_dataloader)
        model.train(was_training)
        if self.teacher_loss is None:
            self.teacher_loss = labelled_lm_loss(self.teacher, eval_dataloader)
        values = {
            "eval_student_lm_loss": student_loss,
            "eval_teacher_lm_loss": self.teacher_loss,
            "eval_lm_loss_gap": student_loss - self.teacher_loss,
        }
        if metrics is not None:
            metrics.update(values)
        state.log_history.append({**values, "step": state.global_step})


def labelled_lm_loss(model, dataloader) -> float:
    """Mean next-token loss on positions whose label is not -100, across all processes."""
    from .forward import TeacherRequest, enable_distillation_forward

    enable_distillation_forward(model)
    total = count = None
    for batch in dataloader:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        out = model(**inputs, distillation=TeacherRequest())
        # Labels are unshifted, as the model's own loss takes them: the state at t predicts label t + 1.
        row_nll, row_counts = chunked_nll(out.hidden[:, :-1], batch["labels"][:, 1:], out.head_weight, 1024)
        total = row_nll.sum() if total is None else total + row_nll.sum()
        count = row_counts.sum().double() if count is None else count + row_counts.sum().double()
    if total is None:
        return float("nan")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sums = torch.stack([total, count.to(total.device)])
        torch.distributed.all_reduce(sums)
        total, count = sums[0], sums[1]
    return float(total / count.clamp(min=1))
