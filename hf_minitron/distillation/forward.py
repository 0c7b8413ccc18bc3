"""A distillation mode for a model's own forward.

``model(..., distillation=TeacherRequest(...))`` returns the teacher's final hidden states,
the hidden states of chosen layers and its (gathered) LM-head weight;
``model(..., distillation=StudentRequest(...))`` returns the student's loss against them.
Computing inside ``forward`` matters: the call goes through whatever wrapper accelerate put
around the model (DDP, FSDP2, DeepSpeed), so gradient synchronisation and parameter
gathering happen as in a normal step. Without the keyword the forward is unchanged.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
from transformers.utils import ModelOutput

from ..errors import MinitronError
from ..families import family_for, final_logit_softcap, get_module
from .losses import DenseTeacher, intermediate_state_loss, logit_loss_from_teacher
from .router import router_loss, wants_router_loss
from .sparse import SparseTeacher

EMBEDDINGS = -1  # the "layer" index of the embedding output
PROJECTION = "minitron_projection"


@dataclass
class TeacherRequest:
    layers: tuple[int, ...] = ()
    # A sharded teacher (FSDP, ZeRO-3) frees its gathered weights when its forward returns; the LM head
    # the loss reads later is then copied out while it is still whole.
    copy_head: bool = False


@dataclass
class TeacherOutputs:
    hidden: torch.Tensor
    states: dict[int, torch.Tensor]
    head_weight: torch.Tensor


@dataclass
class StudentRequest:
    teacher: TeacherOutputs | SparseTeacher
    labels: torch.Tensor
    num_items: torch.Tensor | float
    temperature: float = 1.0
    divergence: str = "forward_kl"
    beta: float = 0.5
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    chunk_size: int | None = None  # None: sized to the vocabulary and device (losses.auto_chunk_size)
    track_ce: bool = False
    backend: str = "auto"  # one of losses.LOGIT_LOSS_BACKENDS
    layer_pairs: tuple[tuple[int, int], ...] = ()  # (teacher layer, student layer); EMBEDDINGS for embeddings
    intermediate_loss: str = "cosine"
    alpha: float | None = None  # None: this micro-batch's L_logits / L_is
    stats: dict = field(default_factory=dict)


@dataclass
class DistillationOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logit_loss: torch.Tensor | None = None
    intermediate_loss: torch.Tensor | None = None
    alpha: float | None = None
    router_loss: torch.Tensor | None = None  # mixture-of-experts students whose config asks for it


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter that FSDP2 (a DTensor) or DeepSpeed ZeRO-3 may have partitioned.

    FSDP2's ``full_tensor`` is differentiable. ZeRO-3 keeps an empty placeholder outside the owning
    module's forward; its gathered copy is a detached clone, so this path serves a frozen teacher.
    """
    if hasattr(weight, "full_tensor"):
        return weight.full_tensor()
    if hasattr(weight, "ds_id"):  # a ZeRO-3 partitioned parameter
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return weight.detach().clone()
    return weight


def attach_projection(student, teacher_width: int) -> None:
    """A learned map from the student's width to the teacher's for intermediate-state losses, trained with
    the student and saved apart (never inside the exported model). No-op when the widths agree."""
    student_width = student.config.hidden_size
    if student_width == teacher_width or hasattr(student, PROJECTION):
        return
    projection = torch.nn.Linear(student_width, teacher_width, bias=False)
    kept = (getattr(student.config, "minitron_pruning", None) or {}).get("kept_hidden_channels")
    with torch.no_grad():
        if kept and len(kept) == student_width:
            # A width-pruned student's channels are a subset of the teacher's: start from that embedding.
            projection.weight.zero_()
            projection.weight[torch.tensor(kept), torch.arange(student_width)] = 1.0
    weight = student.get_output_embeddings().weight
    student.add_module(PROJECTION, projection.to(device=weight.device, dtype=weight.dtype))
    student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | {f"{PROJECTION}.weight"}


def _capture_states(model, layers: tuple[int, ...]):
    """Hooks that keep the outputs of the given decoder layers (and the embeddings, as layer -1)."""
    family = family_for(model)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def keep(index):
        def hook(module, args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output

        return hook

    decoder_layers = get_module(model, family.layers)
    for index in set(layers):
        module = get_module(model, family.embeddings) if index == EMBEDDINGS else decoder_layers[index]
        handles.append(module.register_forward_hook(keep(index)))
    return captured, handles


def _post_norm(model, states: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    norm = get_module(model, family_for(model).final_norm)
    return {index: norm(state) for index, state in states.items()}


def _distillation_forward(self, original_forward, *args, distillation=None, **kwargs):
    if distillation is None:
        return original_forward(*args, **kwargs)
    kwargs.pop("labels", None)
    kwargs["use_cache"] = False
    is_student = isinstance(distillation, StudentRequest)
    layers = tuple(s for _, s in distillation.layer_pairs) if is_student else distillation.layers
    captured, handles = _capture_states(self, layers) if layers else ({}, [])
    balance = is_student and wants_router_loss(self)
    if balance:
        kwargs["output_router_logits"] = True
    try:
        base_outputs = getattr(self, self.base_model_prefix)(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    hidden = base_outputs.last_hidden_state
    states = _post_norm(self, captured)
    weight = full_weight(self.get_output_embeddings().weight)
    if not is_student:
        head = weight.detach()
        if distillation.copy_head and weight is self.get_output_embeddings().weight:  # not already a gathered copy
            head = head.clone()
        return TeacherOutputs(
            hidden=hidden.detach(), states={k: v.detach() for k, v in states.items()}, head_weight=head
        )
    result = _student_loss(self, distillation, hidden, states, weight)
    if balance:
        result.router_loss = router_loss(self, base_outputs, kwargs.get("attention_mask"))
        # The logit loss is already divided by the whole step's token count; weighting this micro-batch's
        # balance loss by its share of those tokens makes accumulated steps add up to one token-weighted mean.
        scored = (distillation.labels[:, 1:] != -100).sum().to(result.loss.device)
        share = scored / torch.as_tensor(distillation.num_items, device=result.loss.device).clamp(min=1)
        result.loss = result.loss + share * result.router_loss.to(result.loss.device)
    return result


def _student_loss(model, request: StudentRequest, hidden, states, weight) -> DistillationOutput:
    teacher = request.teacher
    labels = request.labels.to(hidden.device)
    mask = labels[:, 1:] != -100  # position t predicts token t+1
    targets = labels[:, 1:][mask]
    scale = 1.0 / torch.as_tensor(request.num_items, dtype=torch.float32, device=hidden.device).clamp(min=1)
    token_weights = scale.expand(targets.shape[0])
    stats = request.stats
    # Only the shared vocabulary counts: padded embedding rows beyond it never carry real tokens.
    if isinstance(teacher, SparseTeacher):  # cached top-k targets, already one row per scored token
        source, student_weight = teacher, weight[: min(weight.shape[0], teacher.vocab_size or weight.shape[0])]
    else:
        vocab = min(weight.shape[0], teacher.head_weight.shape[0])
        teacher_hidden = teacher.hidden[:, :-1][mask.to(teacher.hidden.device)].to(hidden.device)
        source = DenseTeacher(teacher_hidden, teacher.head_weight[:vocab].to(hidden.device))
        student_weight = weight[:vocab]
    logit_loss = logit_loss_from_teacher(
        hidden[:, :-1][mask],
        student_weight,
        source,
        token_weights,
        targets,
        temperature=request.temperature,
        divergence=request.divergence,
        beta=request.beta,
        kl_weight=request.kl_weight,
        ce_weight=request.ce_weight,
        chunk_size=request.chunk_size,
        stats=stats,
        track_ce=request.track_ce,
        backend=request.backend,
    )
    if not request.layer_pairs:
        return DistillationOutput(loss=logit_loss, logit_loss=logit_loss)
    projection = getattr(model, PROJECTION, None)
    intermediate = torch.zeros((), device=hidden.device)
    for teacher_layer, student_layer in request.layer_pairs:
        student_state = states[student_layer][:, :-1][mask]
        if projection is not None:
            student_state = projection(student_state)
        teacher_state = teacher.states[teacher_layer][:, :-1][mask.to(hidden.device)].to(hidden.device)
        intermediate = intermediate + intermediate_state_loss(
            student_state, teacher_state, token_weights, request.intermediate_loss
        )
    intermediate = intermediate / len(request.layer_pairs)
    if request.alpha is None:  # no earlier step to measure α over: balance this micro-batch by itself
        alpha = float(logit_loss.detach() / intermediate.detach().clamp(min=1e-12))
    else:
        alpha = request.alpha
    stats["intermediate"] = stats.get("intermediate", 0.0) + intermediate.detach()
    return DistillationOutput(
        loss=logit_loss + alpha * intermediate, logit_loss=logit_loss, intermediate_loss=intermediate, alpha=alpha
    )


def _forward_with_distillation(self, *args, distillation=None, **kwargs):
    return _distillation_forward(self, self._minitron_original_forward, *args, distillation=distillation, **kwargs)


def enable_distillation_forward(model) -> None:
    """Give ``model.forward`` the ``distillation=`` keyword (idempotent; generation is unaffected).

    Both the new and the wrapped forward are methods bound to ``model`` (not closures), so a
    ``copy.deepcopy`` of the model runs its own weights.
    """
    forward = getattr(model, "forward", None)
    if getattr(forward, "__func__", None) is _forward_with_distillation:
        return
    cap = final_logit_softcap(model)
    if cap is not None:
        # The logit losses form logits from hidden states × LM head with hand-written gradients, which
        # know nothing of a tanh cap: training would follow different logits from the model's own.
        raise MinitronError(
            f"This model caps its logits (final_logit_softcapping={cap}), which distillation does not reproduce",
            "the chunked logit losses compute raw logits from the final hidden states",
            "set config.final_logit_softcapping = None on the teacher and the student if the cap is inactive in "
            "practice, or distil a model without it (Gemma 3 checkpoints ship without one)",
        )
    model._minitron_original_forward = forward
    model.forward = types.MethodType(_forward_with_distillation, model)
