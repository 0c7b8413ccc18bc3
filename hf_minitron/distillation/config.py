"""DistillationConfig: TRL's SFTConfig plus what knowledge distillation needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig

from ..errors import MinitronError
from ..redaction import SecretsNotPickled
from .losses import DIVERGENCES, INTERMEDIATE_LOSSES, LOGIT_LOSS_BACKENDS


def apply_device_defaults(config) -> None:
    """Defaults of every trainer config here (distillation, teacher correction, alignment).

    bf16 only where a GPU can run it (TRL's configs would switch it on everywhere); no pinned
    dataloader memory where there is no GPU to copy to; TRL's ``gradient_checkpointing`` (its
    configs default it to True) carried over to transformers' newer name
    ``activation_checkpointing`` where that exists, so building a config does not warn about the old
    name on every run (either name works in recipes and YAML files).
    """
    if config.bf16 is None and not config.fp16:
        config.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if hasattr(config, "activation_checkpointing") and config.activation_checkpointing is None:
        config.activation_checkpointing, config.gradient_checkpointing = config.gradient_checkpointing, None
    if not torch.cuda.is_available():
        config.dataloader_pin_memory = False  # pinned memory only helps copies to a GPU (torch warns otherwise)


@dataclass
class DistillationConfig(SecretsNotPickled, SFTConfig):
    r"""Configuration for [`DistillationTrainer`]: every `SFTConfig` / `TrainingArguments` option, plus:

    > Teacher

    teacher_model_name_or_path (`str`, *optional*): teacher to load when the trainer gets no `teacher_model`
        (Hub id, folder, `.gguf` file or `builtin:NAME`).
    teacher_model_init_kwargs (`dict` or `str`, *optional*): keyword arguments for loading the teacher, e.g.
        `{"dtype": "bfloat16"}` (a JSON string on a command line); the teacher is frozen and kept in eval mode
        either way. Without a dtype there, the teacher runs in bf16 (fp16) when training in bf16 (fp16), else
        in fp32, online and when caching its logits alike (`hf_minitron.loading.load_teacher`).
    teacher_logits_cache (`str`, *optional*): a folder written by `hf-minitron cache-logits`; the student then
        trains on the teacher's cached top-k log-probabilities (with the tail mass) and no teacher is loaded.
        Rows are matched to the cache by fingerprint; packing, padding-free batches and intermediate-state
        losses are not available from a cache.

    Unlike `SFTConfig`, `packing_strategy` defaults to `"bfd_split"`: with `packing=True`, text beyond
    `max_length` becomes further sequences instead of being cut off.

    > Logit loss

    temperature (`float`, defaults to `1.0`): both models' logits are divided by it (Minitron: 1.0 was best).
    divergence (`str`, defaults to `"forward_kl"`): `forward_kl` = KL(teacher ‖ student), `reverse_kl`, or `jsd`
        (generalised Jensen-Shannon with `jsd_beta`).
    jsd_beta (`float`, defaults to `0.5`): mixture weight of the teacher in `jsd`, strictly between 0 and 1.
    kl_weight (`float`, defaults to `1.0`): weight of the logit (divergence) loss.
    ce_weight (`float`, defaults to `0.0`): weight of the student's LM cross-entropy; Minitron found the
        distillation loss alone best.
    logit_chunk_size (`int`, *optional*): tokens per chunk of the logit loss; peak memory is about a few
        chunk × vocab fp32 buffers. Unset: 1024 on the CPU, on a GPU the largest power of two whose fp32
        chunk × vocab buffer fits in 1 GiB (2048 at a 128k vocabulary).
    logit_loss_backend (`str`, defaults to `"auto"`): how the logit loss is computed. `chunked`: the project's
        chunk, eager (fp32 for fp32 models; bf16 tensor-core matmuls with fp32 softmax and accumulation for
        bf16 models or bf16 autocast). `compiled`: the same chunk with its softmax, divergence and gradient
        fused by `torch.compile`. `liger`: Liger-Kernel's fused linear JSD (`pip install 'hf_minitron[liger]'`).
        `auto`: `compiled` on a CUDA GPU with Triton, else `chunked`. A backend that cannot serve the settings
        (Liger: cached teachers, kl_weight 0, evaluation) falls back and says why; the one used is logged
        once when training starts.
    log_student_ce (`bool`, defaults to `True`): log the student's cross-entropy even when its weight is 0.

    > Intermediate-state loss (for heavily depth-pruned students)

    intermediate_layer_pairs (`list[str]`, *optional*): `"teacher:student"` layer pairs (0-based), or `["auto"]`
        to pair each student layer with the teacher layer at the same relative depth. Off when unset.
    intermediate_loss (`str`, defaults to `"cosine"`): `cosine` (1 − cos) or `mse`, on hidden states after each
        model's final norm; a learned linear projection maps the student up to the teacher's width when they differ.
    embedding_loss (`bool`, defaults to `False`): also compare the embedding outputs.
    intermediate_alpha (`str`, defaults to `"dynamic"`): `dynamic` sets α = L_logits / L_intermediate (measured over
        the previous optimizer step across all processes, a detached scale, capped at 100 and smoothed with
        momentum 0.9; the first step uses the logit loss alone), or a number for a fixed α. Total: L_logits + α·L_is.

    > Speed (see also `use_liger_kernel`, `gradient_checkpointing` and `padding_free` / `packing`)

    compile_layers (`bool`, defaults to `False`): `torch.compile` every decoder layer of the student and the
        teacher (one compiled graph serves all layers of a model; the loss stays outside). `use_liger_kernel`
        applies Liger's RMSNorm, SwiGLU and RoPE kernels to both models (never its fused LM-head loss, which
        the logit loss replaces).
    """

    # Distillation text is often long documents: split what overflows max_length instead of dropping it.
    packing_strategy: str = field(
        default="bfd_split",
        metadata={
            "help": "bfd_split (default here: overflow becomes more sequences), bfd (truncates) or wrapped.",
            "choices": ["bfd", "bfd_split", "wrapped"],
        },
    )
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Teacher to load."})
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments for loading the teacher, e.g. {'dtype': 'bfloat16'}."}
    )
    teacher_logits_cache: str | None = field(
        default=None, metadata={"help": "Train from cached top-k teacher logits (hf-minitron cache-logits)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Logit temperature for the divergence."})
    divergence: str = field(default="forward_kl", metadata={"help": "forward_kl, reverse_kl or jsd."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Teacher weight of the JSD mixture, in (0, 1)."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of the logit distillation loss."})
    ce_weight: float = field(default=0.0, metadata={"help": "Weight of the student's cross-entropy loss."})
    logit_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per chunk of the logit loss (unset: sized to vocabulary and device)."}
    )
    logit_loss_backend: str = field(
        default="auto",
        metadata={"help": "auto, chunked, compiled or liger.", "choices": list(LOGIT_LOSS_BACKENDS)},
    )
    log_student_ce: bool = field(default=True, metadata={"help": "Log the student's cross-entropy."})
    intermediate_layer_pairs: list[str] | None = field(
        default=None, metadata={"help": "teacher:student layer pairs, or 'auto'."}
    )
    intermediate_loss: str = field(default="cosine", metadata={"help": "cosine or mse."})
    embedding_loss: bool = field(default=False, metadata={"help": "Also match the embedding outputs."})
    intermediate_alpha: str = field(default="dynamic", metadata={"help": "'dynamic' or a fixed number."})
    compile_layers: bool = field(default=False, metadata={"help": "torch.compile each decoder layer of both models."})

    def __post_init__(self):
        apply_device_defaults(self)
        super().__post_init__()
        problems = []
        if self.divergence not in DIVERGENCES:
            problems.append(f"divergence '{self.divergence}' is not one of {', '.join(DIVERGENCES)}")
        if self.divergence == "jsd" and not 0 < self.jsd_beta < 1:
            problems.append(f"jsd_beta={self.jsd_beta} must be strictly between 0 and 1 (use forward_kl / reverse_kl)")
        if self.temperature <= 0:
            problems.append(f"temperature={self.temperature} must be positive")
        if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
            problems.append("kl_weight and ce_weight must be ≥ 0 and not both 0")
        if self.intermediate_loss not in INTERMEDIATE_LOSSES:
            problems.append(f"intermediate_loss '{self.intermediate_loss}' is not one of cosine, mse")
        if self.logit_chunk_size is not None and self.logit_chunk_size < 1:
            problems.append("logit_chunk_size must be ≥ 1")
        if self.logit_loss_backend not in LOGIT_LOSS_BACKENDS:
            problems.append(
                f"logit_loss_backend '{self.logit_loss_backend}' is not one of {', '.join(LOGIT_LOSS_BACKENDS)}"
            )
        if isinstance(self.intermediate_layer_pairs, str):
            self.intermediate_layer_pairs = [p.strip() for p in self.intermediate_layer_pairs.split(",") if p.strip()]
        if self.intermediate_alpha != "dynamic":
            try:
                if float(self.intermediate_alpha) < 0:
                    problems.append("intermediate_alpha must be 'dynamic' or a number ≥ 0")
            except (TypeError, ValueError):
                problems.append(f"intermediate_alpha must be 'dynamic' or a number, got {self.intermediate_alpha!r}")
        if self.embedding_loss and not self.intermediate_layer_pairs:
            self.intermediate_layer_pairs = []
        if problems:
            raise MinitronError("Invalid distillation settings: " + "; ".join(problems))
        if self.teacher_logits_cache is not None:
            from ..distillation_data.logit_cache import check_cache_settings

            check_cache_settings(self)

    @property
    def uses_intermediate_loss(self) -> bool:
        return bool(self.intermediate_layer_pairs) or self.embedding_loss

    @property
    def fixed_alpha(self) -> float | None:
        return None if self.intermediate_alpha == "dynamic" else float(self.intermediate_alpha)
