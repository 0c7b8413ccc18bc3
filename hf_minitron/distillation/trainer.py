"""DistillationTrainer: TRL's SFTTrainer with a frozen teacher and chunked logit distillation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from trl import SFTTrainer

from .. import crashpoints
from ..distillation_data.logit_cache import CACHE_ROW_COLUMN
from ..errors import MinitronError
from ..exporting import export_trained_model
from ..loading import load_model, load_teacher, load_tokenizer
from .cached_teacher import CachedTeacherMixin
from .callbacks import LossComponentsCallback, NonFiniteLossCallback, TeacherGapCallback
from .config import DistillationConfig
from .forward import PROJECTION, StudentRequest, TeacherRequest, attach_projection, enable_distillation_forward
from .pairs import resolve_layer_pairs
from .speed import apply_liger_layer_kernels, compile_decoder_layers

logger = logging.getLogger(__name__)

# Dynamic α (intermediate-state losses): each step's measured L_logits / L_is is capped, then smoothed.
ALPHA_CAP = 100.0
ALPHA_MOMENTUM = 0.9

PROJECTION_FILE = "distillation_projection.safetensors"
STATE_FILE = "distillation_state.json"  # the dynamic α and its running sums, so a resumed run continues exactly


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _model_source(model) -> str | None:
    return getattr(model, "minitron_source", None) or getattr(model.config, "_name_or_path", None)


class DistillationTrainer(CachedTeacherMixin, SFTTrainer):
    """Off-policy knowledge distillation of ``model`` (the student) from ``teacher_model``.

    Everything SFTTrainer does with data (plain text, packing, chat messages, prompt/completion
    with completion-only loss) works unchanged; the loss becomes the teacher–student logit
    divergence (plus optional cross-entropy and intermediate-state losses), normalised by
    ``num_items_in_batch`` so gradient accumulation equals the large batch.
    """

    _tag_names: ClassVar[list[str]] = ["trl", "sft", "distillation", "hf_minitron"]

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: DistillationConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None or not isinstance(args, DistillationConfig):
            raise MinitronError(
                "DistillationTrainer needs a DistillationConfig as args",
                fix="pass args=DistillationConfig(output_dir=..., ...)",
            )
        if model is None:
            raise MinitronError("No student model was given", fix="pass model=<student model or its path>")
        student = load_model(model, dtype="float32") if isinstance(model, str) else model
        if peft_config is None and not any(p.requires_grad for p in student.parameters()):
            raise MinitronError(
                "Every parameter of the student is frozen (requires_grad=False)",
                "a student pruned from a frozen model keeps it frozen, and this trainer freezes its teacher",
                "call student.requires_grad_(True) before training it",
            )
        self.logit_cache = self._open_cache(teacher_model, args)
        teacher = None if self.logit_cache else self._load_teacher(teacher_model, args)
        if processing_class is None:
            source = (
                _model_source(student)
                if self.logit_cache
                else (args.teacher_model_name_or_path or _model_source(teacher))
            )
            processing_class = load_tokenizer(source) if source else None
        teacher_vocab = self.logit_cache.vocab_size if self.logit_cache else _vocab_size(teacher)
        self._check_vocab(_vocab_size(student), teacher_vocab, processing_class)
        self.layer_pairs = resolve_layer_pairs(args, teacher, student) if teacher is not None else ()
        super().__init__(
            model=student,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            peft_config=peft_config,
            **kwargs,
        )
        base = _unwrap_peft(self.model)
        enable_distillation_forward(base)
        if args.compile_layers:
            compile_decoder_layers(base)
        if self.logit_cache:
            self._attach_cache_rows_or_clean_up(args.output_dir)
            self.teacher = None
        else:
            if self.layer_pairs:
                attach_projection(base, teacher.config.hidden_size)
            self.teacher = self._prepare_teacher(teacher, args)
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise MinitronError(
                "DeepSpeed ZeRO-3 partitions the student's LM head, which the chunked logit loss reads directly",
                "the teacher can be ZeRO-3-partitioned, the student cannot",
                "train the student with FSDP2 (recipes/accelerate/fsdp2.yaml) or ZeRO-2 (zero2.yaml there)",
            )
        self._alpha: float | None = args.fixed_alpha
        self._alpha_step = -1
        self._step_sums = [0.0, 0.0]
        self.logit_loss_backend: str | None = None  # the backend the first training step used
        for callback in (LossComponentsCallback(), NonFiniteLossCallback()):
            self.add_callback(callback)
        if crashpoints.active():
            self.add_callback(crashpoints.step_callback())
        if eval_dataset is not None and self.teacher is not None:
            self.add_callback(TeacherGapCallback(self.teacher))

    # -- setup ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _load_teacher(teacher_model, args: DistillationConfig):
        if teacher_model is None and args.teacher_model_name_or_path is None:
            raise MinitronError(
                "No teacher was given",
                "distillation trains the student to match a teacher's predictions",
                "pass teacher_model=... or set teacher_model_name_or_path in the DistillationConfig",
            )
        # The same loader (and so the same precision) as the teacher-logit cache: see loading.load_teacher.
        return load_teacher(
            teacher_model or args.teacher_model_name_or_path, args, init_kwargs=args.teacher_model_init_kwargs
        )

    @staticmethod
    def _check_vocab(student_vocab: int, teacher_vocab: int, tokenizer) -> None:
        if student_vocab == teacher_vocab:
            return
        used = len(tokenizer) if tokenizer is not None else max(student_vocab, teacher_vocab)
        if used > min(student_vocab, teacher_vocab):
            raise MinitronError(
                f"The student's vocabulary ({student_vocab}) differs from the teacher's ({teacher_vocab})",
                f"logit distillation compares distributions token by token, and the tokenizer uses {used} ids",
                "distil a student that shares the teacher's tokenizer (a pruned student always does)",
            )

    def _prepare_teacher(self, teacher, args):
        teacher.eval()
        teacher.requires_grad_(False)
        if args.use_liger_kernel:  # the Trainer applies them to the student
            apply_liger_layer_kernels(teacher, args.liger_kernel_config)
        if args.compile_layers:
            compile_decoder_layers(teacher)
        enable_distillation_forward(teacher)
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2:
            from .sharding import shard_teacher_like_student

            return shard_teacher_like_student(teacher, self.accelerator).eval()
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(teacher, self.accelerator)
        return teacher.to(self.accelerator.device)

    # -- loss ------------------------------------------------------------------------------------------------------

    def _current_alpha(self) -> float | None:
        """α for this optimizer step: fixed, or measured as L_logits / L_is over the previous optimizer step.

        The sums behind the measurement span every micro-batch of the step and every process (all-reduced),
        so two processes, or accumulation, give exactly the α of one big batch. Each measurement is capped at
        ``ALPHA_CAP`` (an intermediate loss near zero would otherwise blow α up) and smoothed with momentum
        ``ALPHA_MOMENTUM``. The first step has nothing measured yet and trains on the logit loss alone.
        """
        if self.args.fixed_alpha is not None or not self.layer_pairs:
            return self.args.fixed_alpha
        step = self.state.global_step
        if step != self._alpha_step:
            sums = torch.tensor(self._step_sums, dtype=torch.float64, device=self.accelerator.device)
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            logits_sum, intermediate_sum = sums.tolist()
            if intermediate_sum > 0:
                measured = min(logits_sum / intermediate_sum, ALPHA_CAP)
                if self._alpha is not None:
                    measured = ALPHA_MOMENTUM * self._alpha + (1 - ALPHA_MOMENTUM) * measured
                self._alpha = measured
            self._alpha_step, self._step_sums = step, [0.0, 0.0]
        return self._alpha if self._alpha is not None else 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        cache_rows = inputs.get(CACHE_ROW_COLUMN)
        skip = ("labels", "completion_mask", "assistant_masks", CACHE_ROW_COLUMN)
        forward_inputs = {k: v for k, v in inputs.items() if k not in skip}
        if self.logit_cache is not None:
            teacher_outputs = self._cached_targets(cache_rows, labels)
        else:
            teacher_layers = tuple(t for t, _ in self.layer_pairs)
            with torch.no_grad():
                request = TeacherRequest(
                    layers=teacher_layers, copy_head=self.is_fsdp_enabled or self.is_deepspeed_enabled
                )
                teacher_outputs = self.teacher(**forward_inputs, distillation=request)
        num_items = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
        args = self.args
        request = StudentRequest(
            teacher=teacher_outputs,
            labels=labels,
            num_items=num_items,
            temperature=args.temperature,
            divergence=args.divergence,
            beta=args.jsd_beta,
            kl_weight=args.kl_weight,
            ce_weight=args.ce_weight,
            chunk_size=args.logit_chunk_size,
            track_ce=args.log_student_ce or args.ce_weight > 0,
            backend=args.logit_loss_backend,
            layer_pairs=self.layer_pairs,
            intermediate_loss=args.intermediate_loss,
            alpha=self._current_alpha() if mode == "train" else self._alpha,
        )
        outputs = model(**forward_inputs, distillation=request)
        loss = outputs.loss
        if mode == "train" and self.logit_loss_backend is None:
            self.logit_loss_backend = request.stats.get("backend")
            logger.warning(
                "Distillation logit loss: backend '%s' (logit_loss_backend=%s)",
                self.logit_loss_backend,
                args.logit_loss_backend,
            )
        # Like Trainer: num_items_in_batch counts every rank's tokens, and DDP averages gradients over ranks.
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._record(mode, request, outputs, num_items, inputs)
        return (loss, outputs) if return_outputs else loss

    def _record(self, mode, request, outputs, num_items, inputs) -> None:
        """Loss components per scored token, for logging (SFTTrainer.log averages them per logging step)."""
        stats = request.stats
        tokens = int((request.labels[:, 1:] != -100).sum())
        share = float(num_items) / max(tokens, 1)  # undo the whole-step normalisation: per-token values
        metrics = self._metrics[mode]
        metrics["kl"].append(float(stats["kl"]) * share)
        if request.track_ce:
            metrics["ce"].append(float(stats["ce"]) * share)
        if outputs.intermediate_loss is not None:
            metrics["intermediate"].append(float(stats["intermediate"]) * share)
            metrics["alpha"].append(outputs.alpha)
            if mode == "train":
                self._step_sums[0] += float(outputs.logit_loss.detach())
                self._step_sums[1] += float(outputs.intermediate_loss.detach())
        if outputs.router_loss is not None:
            metrics["router"].append(float(outputs.router_loss.detach()))
        loss_value = float(outputs.loss.detach())
        if not torch.isfinite(torch.tensor(loss_value)):
            NonFiniteLossCallback.fail(self.args, self.state, {"loss": loss_value, **stats})
        if mode == "train":
            # Padded batches count their mask; packed (padding-free) batches are all real tokens.
            mask = inputs.get("attention_mask")
            local = (
                mask.sum()
                if mask is not None
                else torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            )
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum())
        metrics["num_tokens"] = [self._total_train_tokens]

    # -- saving ----------------------------------------------------------------------------------------------------

    def _projection(self):
        return getattr(_unwrap_peft(self.accelerator.unwrap_model(self.model)), PROJECTION, None)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        projection = self._projection()
        if projection is not None and self.args.should_save:
            weights = {"weight": projection.weight.detach().float().cpu().contiguous()}
            save_file(weights, os.path.join(output_dir or self.args.output_dir, PROJECTION_FILE))
        crashpoints.pause_point(f"checkpoint-weights:{Path(output_dir or self.args.output_dir).name}")

    def _save_checkpoint(self, model, trial):
        # Our state goes in first: the Trainer writes trainer_state.json last, and a checkpoint counts as
        # complete (resumable) only once that file exists, so everything else must be there by then.
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            state = {
                "alpha": self._alpha,
                "alpha_step": self._alpha_step,
                "step_sums": self._step_sums,
                "total_train_tokens": self._total_train_tokens,
            }
            (folder / STATE_FILE).write_text(json.dumps(state))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = Path(resume_from_checkpoint)
        projection = self._projection()
        if projection is not None and (folder / PROJECTION_FILE).is_file():
            with torch.no_grad():
                projection.weight.copy_(load_file(str(folder / PROJECTION_FILE))["weight"].to(projection.weight))
        if (folder / STATE_FILE).is_file():
            state = json.loads((folder / STATE_FILE).read_text())
            self._alpha, self._alpha_step, self._step_sums = state["alpha"], state["alpha_step"], state["step_sums"]
            self._total_train_tokens = state.get("total_train_tokens", self._total_train_tokens)

    def export_student(self, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the student as a plain transformers folder: LoRA adapters merged, no projection inside.

        The projection (if any) goes beside it as ``distillation_projection.safetensors``. Call it on every
        process: sharded weights are gathered collectively, then the main process writes
        (``hf_minitron.exporting``, shared with alignment and teacher correction).
        """
        return export_trained_model(
            self, output_dir, overwrite=overwrite, kind="distilled model", set_aside={PROJECTION: PROJECTION_FILE}
        )
