"""Sequential reconstruction: re-fit a pruned student's layers, in order, to follow its teacher.

The teacher and every student walk the calibration batches one layer at a time. The teacher's
residual stream is the target; each student's own stream (through its already re-fitted layers)
is the input, so every fit also corrects the drift of the layers below it. For student layer j,
a copy of teacher layer t:

- attention output (o_proj) on the kept heads' outputs A:   A·Wᵀ ≈ teacher_mid(t)[kept] − student_in
- MLP output (down_proj) on the kept neurons' activations Z: Z·Wᵀ ≈ teacher_in(t')[kept] − student_mid

where t' is the teacher layer mirrored by the student's *next* layer: after a span of dropped layers
the target is the teacher's stream after that span, which is how the span is stood in for (or, with
``span_method="linear_map"``, ReplaceMe's hidden × hidden map of the MLP output, folded into
down_proj). Only weights change; shapes, names and config stay those of a plain transformers model.

Memory: one layer's statistics, plus the hidden states of every calibration batch for the teacher
and each student (tokens × hidden × dtype size each) and the teacher's mid-layer states of one layer.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..data import CalibrationSet, build_calibration_set
from ..errors import MinitronError
from ..families import family_for, find_module
from ..layer_io import record_calibration_batches, run_layer
from ..layers import decoder_layers
from ..pruning.prune import RECORD_KEY
from .config import ReconstructionConfig
from .fits import StudentWalk, fit_attention_output, fit_final_norm, fit_mlp_output

DEFAULT_SAMPLES = 128  # when the calibration data is raw text and no num_samples is set
WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def _walk_for(student, teacher) -> StudentWalk:
    """Check that ``student`` was pruned from ``teacher`` and read which layers and channels it kept."""
    record = getattr(student.config, RECORD_KEY, None)
    if not record:
        raise MinitronError(
            "The student carries no pruning record (config.minitron_pruning)",
            "reconstruction needs to know which teacher layer and channel each of the student's came from",
            "prune the student with hf_minitron.prune_model (or `hf-minitron prune`) from this teacher",
        )
    if family_for(student) is not family_for(teacher):
        raise MinitronError("The student and the teacher are of different model families")
    pruned_from, config = record.get("source_shape", {}), teacher.config
    expected = {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size")}
    wrong = {k: (pruned_from.get(k), v) for k, v in expected.items() if pruned_from.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: pruned from {a}, teacher has {b}" for k, (a, b) in wrong.items())
        raise MinitronError(
            f"This student was not pruned from this teacher ({detail})",
            fix="reconstruct against the model the student was pruned from",
        )
    dropped = set(record.get("dropped_layers") or [])
    kept = [i for i in range(config.num_hidden_layers) if i not in dropped]
    if len(kept) != len(decoder_layers(student)):
        raise MinitronError(
            f"The student has {len(decoder_layers(student))} layers but its record keeps {len(kept)}",
            fix="reconstruct the student right after pruning it, before changing its layers",
        )
    channels = record.get("kept_hidden_channels")
    width_changed = any(getattr(student.config, k) != getattr(config, k) for k in WIDTHS)
    return StudentWalk(
        model=student,
        kept=kept,
        hidden=torch.tensor(channels) if channels is not None else None,
        changed=set(range(len(kept))) if width_changed else set(),
    )


def reconstruct_models(
    teacher,
    students: list,
    calibration_data,
    tokenizer=None,
    config: ReconstructionConfig | None = None,
    *,
    seq_len: int = 1024,
    progress: bool = True,
) -> list[dict]:
    """Re-fit several students of one teacher in place, paying for the teacher's pass once.

    ``calibration_data`` is a ``CalibrationSet`` or anything ``build_calibration_set`` reads (then
    ``config.num_samples`` (default 128) packed samples of ``seq_len`` tokens are taken). Returns one
    report per student (per-layer relative errors before and after each fit), also summarised in
    its ``config.minitron_pruning["reconstruction"]``.
    """
    config = config or ReconstructionConfig()
    walks = [_walk_for(student, teacher) for student in students]
    if not isinstance(calibration_data, CalibrationSet):
        if tokenizer is None:
            raise MinitronError("A tokenizer is needed to tokenize the calibration text", fix="pass tokenizer=...")
        samples = config.num_samples or DEFAULT_SAMPLES
        calibration_data = build_calibration_set(calibration_data, tokenizer, num_samples=samples, seq_len=seq_len)
    calibration_data = calibration_data.first(config.num_samples)
    start = time.time()
    modes = [(model, model.training) for model in (teacher, *students)]
    for model, _ in modes:
        model.eval()
    try:
        _walk(teacher, walks, calibration_data, config, progress)
    finally:
        for model, training in modes:
            model.train(training)
    seconds = round(time.time() - start, 1)
    reports = []
    for walk in walks:
        report = {
            "settings": config.to_dict(),
            "data": calibration_data.description,
            "tokens": calibration_data.num_tokens,
            "layers": walk.fits,
        }
        _record(walk.model, report)  # what is saved with the model: the same on every rerun
        reports.append({**report, "seconds": seconds})
    return reports


def reconstruct_model(student, teacher, calibration_data, tokenizer=None, config=None, **kwargs) -> dict:
    """Re-fit the pruned ``student`` in place to follow ``teacher`` (see ``ReconstructionConfig``)."""
    return reconstruct_models(teacher, [student], calibration_data, tokenizer, config, **kwargs)[0]


@torch.no_grad()
def _walk(teacher, walks: list[StudentWalk], calibration: CalibrationSet, config, progress: bool) -> None:
    batches = record_calibration_batches(teacher, calibration, config.batch_size)
    teacher_stream = [batch.hidden for batch in batches]
    for walk in walks:
        walk.stream = [walk.select(hidden) for hidden in teacher_stream]
        walk.follows_teacher = walk.hidden is None
    teacher_layers = decoder_layers(teacher)
    last = len(teacher_layers) - 1
    needed = [_last_layer_needed(walk, config, last) for walk in walks]
    for t in tqdm(range(len(teacher_layers)), desc="reconstruction", disable=not progress):
        active = []
        for walk, until in zip(walks, needed, strict=True):
            if t <= until:
                active.append(walk)
            elif t in walk.kept:  # its fits are done: the layer is listed, its stream stays
                walk.fits.append({"layer": walk.kept.index(t), "teacher_layer": t})
        if not active:
            continue  # every student's fits are done: the teacher's layers above change nothing
        seen = [
            run_layer(teacher, teacher_layers[t], hidden, batch.layer_kwargs[t])
            for hidden, batch in zip(teacher_stream, batches, strict=True)
        ]
        teacher_mids, teacher_stream = [s.mid for s in seen], [s.output for s in seen]
        del seen
        for walk in active:
            if t in walk.kept:  # a student layer copies teacher layer t: fit its attention now
                index = walk.kept.index(t)
                walk.pending = index
                walk.fits.append({"layer": index, "teacher_layer": t})
                if config.attention_output and (config.layers == "all" or index in walk.changed):
                    walk.fits[-1]["attention"] = fit_attention_output(
                        walk, index, batches, teacher_mids, config.damping
                    )
            following = next((k for k in walk.kept if k > t), None)
            span_ends = following == t + 1 if following is not None else t == last
            if walk.pending is None or not span_ends:
                continue  # inside a dropped span: the pending layer's MLP waits for the span's end
            index, walk.pending = walk.pending, None
            span = t > walk.kept[index]
            # A sparse MoE layer mixes routed experts: there is no single output projection to re-fit.
            dense = find_module(walk.layer(index), family_for(walk.model).neuron_activation_input) is not None
            if dense and config.mlp_output and (config.layers == "all" or index in walk.changed or span):
                fit = walk.fits[-1]
                as_map = span and config.span_method == "linear_map"
                fit["mlp"] = fit_mlp_output(walk, index, batches, teacher_stream, config.damping, as_map)
                if span:
                    fit["span"] = [walk.kept[index] + 1, t]
            untouched = not span and not {"attention", "mlp"} & set(walk.fits[-1])
            if walk.follows_teacher and untouched and _same_shapes(walk.layer(index), teacher_layers[t]):
                # An untouched copy of teacher layer t on the teacher's input: its output is the teacher's.
                # (A depth student re-fitting only the layer before its dropped block skips a pass of
                # every layer below it.)
                walk.stream = list(teacher_stream)
                walk.attention_inputs.pop(index, None)
                walk.mlp_parts = None
                continue
            walk.follows_teacher = False
            walk.advance(index, batches)
    for walk in walks:
        if config.final_norm and walk.hidden is not None:
            walk.fits.append(fit_final_norm(walk, teacher, teacher_stream, batches, config.damping))


def _same_shapes(student_layer, teacher_layer) -> bool:
    """Whether pruning left the layer whole: it only ever removes (heads, neurons, experts), so a layer of the
    teacher's shapes is the teacher's, unless a fit changed it."""
    shapes = [[tuple(p.shape) for p in layer.parameters()] for layer in (student_layer, teacher_layer)]
    return shapes[0] == shapes[1]


def _last_layer_needed(walk: StudentWalk, config: ReconstructionConfig, last: int) -> int:
    """The last teacher layer this student's walk must go through: that of its last fit. With ``layers:
    changed`` a depth-pruned student is done after the layer before its last dropped span, and running
    its stream through the rest of its layers (a whole forward pass of them on every calibration token)
    would change nothing. -1 where nothing is fitted at all."""
    fits_every_layer = config.layers == "all" and (config.attention_output or config.mlp_output)
    if fits_every_layer or (config.final_norm and walk.hidden is not None):
        return last
    ends = [*[k - 1 for k in walk.kept[1:]], last]  # the teacher layer where each student layer's fit ends
    spans = {j for j, end in enumerate(ends) if end > walk.kept[j]}
    fitted = (walk.changed if config.attention_output or config.mlp_output else set()) | (
        spans if config.mlp_output else set()
    )
    return max((ends[j] for j in fitted), default=-1)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _record(student, report: dict) -> None:
    """A compact summary in the student's pruning record (config.json), for cards and provenance."""
    summary = {key: report[key] for key in ("settings", "data", "tokens")}
    for part in ("attention", "mlp"):
        fits = [fit[part] for fit in report["layers"] if part in fit]
        summary[f"{part}_fits"] = len(fits)
        summary[f"{part}_error"] = [_mean([f["error_before"] for f in fits]), _mean([f["error_after"] for f in fits])]
    getattr(student.config, RECORD_KEY)["reconstruction"] = summary
