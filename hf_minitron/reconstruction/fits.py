"""The re-fits of one student layer against its teacher, each over every calibration batch.

``StudentWalk`` is one student going through the calibration batches alongside the teacher: its
own residual stream (the input of its next layer, computed by its already re-fitted layers) and
the teacher channel each of its channels came from. Each fit streams the batches through the
student layer, accumulates least-squares statistics against a target taken from the teacher's
stream, and writes the solution into the layer's weights; it returns the relative error of the
layer's output against that target before and after.

A layer runs whole only for its attention fit (up to its output projection) and once more, on one batch,
to check that computing it in parts (``layer_io``) gives the same numbers; after that, its MLP inputs
come from the o_proj inputs the attention fit saw, and its output from the MLP fit's activations and the
new projection, so each student layer costs about one pass instead of three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..families import family_for, get_module, norm_gain, scale_norm_gain_
from ..layer_io import (
    CalibrationBatch,
    layer_output,
    mlp_output_input,
    parts_match,
    residual_after_attention,
    run_layer,
)
from ..layers import decoder_layers
from .least_squares import LeastSquares


@dataclass
class StudentWalk:
    """One student's walk alongside the teacher."""

    model: torch.nn.Module
    kept: list[int]  # the teacher layer each student layer is a copy of
    hidden: torch.Tensor | None  # the teacher channel of each student channel (None: all kept)
    changed: set[int]  # student layers whose width differs from the teacher's
    stream: list[torch.Tensor] = field(default_factory=list)  # per batch: input of the next student layer
    pending: int | None = None  # student layer whose MLP fit waits for the end of a dropped span
    fits: list[dict] = field(default_factory=list)
    attention_inputs: dict = field(default_factory=dict)  # layer → per batch: its o_proj input, until its MLP fit
    mlp_parts: list | None = None  # per batch, from the last MLP fit: (stream after attention, down_proj input)
    parts_ok: bool | None = None  # the layer computed in parts equals the layer (checked once)
    # Its stream is the teacher's: every channel kept and every layer so far an untouched copy of the
    # teacher's (same shapes, no fit) on the teacher's own input, so the next such copy needs no pass.
    follows_teacher: bool = False

    def select(self, teacher_hidden: torch.Tensor) -> torch.Tensor:
        """The teacher's residual stream restricted to the student's channels."""
        if self.hidden is None:
            return teacher_hidden
        return teacher_hidden.index_select(-1, self.hidden.to(teacher_hidden.device))

    def layer(self, index: int) -> torch.nn.Module:
        return decoder_layers(self.model)[index]

    def mlp_inputs(self, index: int, number: int, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The stream after attention and the MLP output projection's input of layer ``index`` for batch
        ``number``: from the o_proj inputs its attention fit saw, without running the attention again,
        once the first batch run through the whole layer has shown that this gives the same numbers."""
        layer, stream = self.layer(index), self.stream[number]
        attention_inputs = self.attention_inputs.get(index)
        if attention_inputs is None or not self.parts_ok:
            seen = run_layer(self.model, layer, stream, kwargs)
            if self.parts_ok is None:
                self.parts_ok = parts_match(self.model, layer, stream, seen)
            return seen.mid, seen.mlp_output_input
        mid = residual_after_attention(self.model, layer, stream, attention_inputs[number])
        return mid, mlp_output_input(self.model, layer, mid)

    @torch.no_grad()
    def advance(self, index: int, batches: list[CalibrationBatch]) -> None:
        """Move the stream through student layer ``index`` (as it is now). After an MLP fit, without running
        the layer again: only the output projection changed, so the output is the stream after attention
        plus the new projection of the activations the fit already saw (through the family's output norm)."""
        parts, self.mlp_parts = self.mlp_parts, None
        self.attention_inputs.pop(index, None)
        layer = self.layer(index)
        if parts is not None and self.parts_ok:
            self.stream = [layer_output(self.model, layer, mid, activations) for mid, activations in parts]
            return
        kwargs = [batch.layer_kwargs[self.kept[index]] for batch in batches]
        self.stream = [run_layer(self.model, layer, h, k).output for h, k in zip(self.stream, kwargs, strict=True)]


def _write(problem: LeastSquares, linear: torch.nn.Linear, damping: float) -> dict:
    before = problem.relative_error(linear.weight, linear.bias)
    weight, bias, after = problem.fit(linear.weight, linear.bias, damping)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return {"error_before": before, "error_after": after}


def _problem(linear: torch.nn.Linear, inputs: int | None = None) -> LeastSquares:
    size = linear.in_features if inputs is None else inputs
    return LeastSquares(size, linear.out_features, linear.bias is not None, linear.weight.device)


def _before_output_norm(family, layer, norm_name: str | None, wanted: torch.Tensor) -> torch.Tensor:
    """The target for a projection whose output passes the norm ``norm_name`` before the residual add.

    ``wanted`` is what the residual add should receive; without such a norm the projection must produce
    it. With one (Gemma's sandwich norms), norm(z) = gain · z / rms(z) keeps only the direction of z, so
    the projection is asked for wanted / gain: its direction is the one whose normalised output points
    along ``wanted``, and its size, proportional to ``wanted``'s, weights every token as the
    residual-stream error does.
    """
    if norm_name is None:
        return wanted
    gain = norm_gain(get_module(layer, norm_name), family).to(wanted.device)
    tiny = torch.full_like(gain, 1e-3).copysign(gain)
    gain = torch.where(gain.abs() < 1e-3, tiny, gain)  # a near-dead channel keeps a bounded target
    return (wanted.float() / gain).to(wanted.dtype)


def fit_attention_output(walk: StudentWalk, index: int, batches, teacher_mids, damping: float) -> dict:
    """Re-fit the attention output projection of student layer ``index`` on its kept heads' outputs, so
    that the residual stream after attention follows the teacher's (``teacher_mids``, per batch)."""
    layer, family = walk.layer(index), family_for(walk.model)
    projection = get_module(layer, family.head_activation_input)
    problem = _problem(projection)
    walk.attention_inputs[index] = kept = []
    for stream, mid, batch in zip(walk.stream, teacher_mids, batches, strict=True):
        kwargs = batch.layer_kwargs[walk.kept[index]]
        seen = run_layer(walk.model, layer, stream, kwargs, stop_after_attention=True)
        kept.append(seen.attention_output_input)
        device = seen.mid.device
        target = walk.select(mid).to(device) - stream.to(device)
        if family.attention_output_norm is not None:
            target = _before_output_norm(family, layer, family.attention_output_norm, target)
        mask = batch.mask.to(device)
        problem.add(seen.attention_output_input[mask], target[mask])
    return _write(problem, projection, damping)


def fit_mlp_output(walk: StudentWalk, index: int, batches, teacher_next, damping: float, as_map: bool) -> dict:
    """Re-fit the MLP output projection of student layer ``index`` so the layer's output follows
    ``teacher_next`` (per batch: the teacher's stream entering the student's next layer, which is after
    any dropped span). ``as_map``: instead fit ReplaceMe's hidden × hidden map M (and offset c) on the MLP
    output m, ``M·m + c``, and fold it into the projection."""
    layer, family = walk.layer(index), family_for(walk.model)
    down = get_module(layer, family.neuron_activation_input)
    problem = _problem(down, down.out_features if as_map else None)
    parts = []  # per batch: the stream after attention and the MLP output projection's input
    for number, (target_stream, batch) in enumerate(zip(teacher_next, batches, strict=True)):
        mid, activations = walk.mlp_inputs(index, number, batch.layer_kwargs[walk.kept[index]])
        parts.append((mid, activations))
        device = mid.device
        target = walk.select(target_stream).to(device) - mid
        if family.mlp_output_norm is not None:
            # The map and the projection act before the output norm: fit them on its input.
            target = _before_output_norm(family, layer, family.mlp_output_norm, target)
        inputs = down(activations) if as_map else activations  # the map reads what the MLP adds
        mask = batch.mask.to(device)
        problem.add(inputs[mask], target[mask])
    walk.mlp_parts = parts
    if not as_map:
        return _write(problem, down, damping)
    size, options = down.out_features, {"dtype": down.weight.dtype, "device": down.weight.device}
    identity = torch.eye(size, **options)
    zero = torch.zeros(size, **options) if down.bias is not None else None
    before = problem.relative_error(identity, zero)
    matrix, offset, after = problem.fit(identity, zero, damping)  # pulled towards "the map does nothing"
    with torch.no_grad():
        fold_linear_map(down, matrix, offset)
    return {"error_before": before, "error_after": after, "linear_map": True}


def fold_linear_map(linear: torch.nn.Linear, matrix: torch.Tensor, offset: torch.Tensor | None = None) -> None:
    """Make ``linear`` compute ``matrix · linear(x) + offset`` with its own weight (and bias), in place."""
    wide = torch.float32 if linear.weight.device.type == "mps" else torch.float64
    m = matrix.to(wide)
    linear.weight.copy_((m @ linear.weight.to(wide)).to(linear.weight.dtype))
    if linear.bias is not None:
        bias = m @ linear.bias.to(wide) + (offset.to(wide) if offset is not None else 0)
        linear.bias.copy_(bias.to(linear.bias.dtype))


@torch.no_grad()
def fit_final_norm(walk: StudentWalk, teacher, teacher_stream, batches, damping: float) -> dict:
    """Per-channel scale of the student's final norm, so its normalised final state follows the teacher's
    on the kept channels. Only the norm changes: the LM head (often tied to the embeddings) is untouched."""
    family = family_for(teacher)
    teacher_norm, norm = get_module(teacher, family.final_norm), get_module(walk.model, family.final_norm)
    device = norm.weight.device
    product = torch.zeros(norm.weight.shape[0], dtype=torch.float64, device=device)
    energy, target_energy = torch.zeros_like(product), torch.zeros_like(product)
    for stream, teacher_state, batch in zip(walk.stream, teacher_stream, batches, strict=True):
        mask = batch.mask.to(device)
        student_out = norm(stream.to(device))[mask].double()
        teacher_out = walk.select(teacher_norm(teacher_state)).to(device)[mask].double()
        product += (student_out * teacher_out).sum(0)
        energy += student_out.pow(2).sum(0)
        target_energy += teacher_out.pow(2).sum(0)
    pull = damping * energy.mean()
    scale = (product + pull) / (energy + pull)  # ridge towards 1: the weight as pruned

    def error(s: torch.Tensor) -> float:
        return float((s * s * energy - 2 * s * product + target_energy).sum() / target_energy.sum())

    before, after = error(torch.ones_like(scale)), error(scale)
    scale_norm_gain_(norm, scale.to(device), family)
    return {"layer": "final_norm", "error_before": before, "error_after": after}
