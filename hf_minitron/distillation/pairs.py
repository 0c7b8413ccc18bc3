"""Which teacher layer each student layer is compared with in the intermediate-state loss."""

from __future__ import annotations

from ..errors import MinitronError
from ..families import family_for
from .forward import EMBEDDINGS


def _auto_pairs(teacher_layers: int, student, student_layers: int) -> list[tuple[int, int]]:
    record = getattr(student.config, "minitron_pruning", None) or {}
    source = (record.get("source_shape") or {}).get("num_hidden_layers")
    dropped = record.get("dropped_layers") or []
    if dropped and source == teacher_layers:
        # A depth-pruned student: layer j *is* the teacher's j-th kept layer.
        kept = [i for i in range(teacher_layers) if i not in set(dropped)]
        return list(zip(kept, range(student_layers), strict=True))
    # Otherwise compare at the same relative depth: student layer j ends where teacher layer t ends.
    return [(round((j + 1) * teacher_layers / student_layers) - 1, j) for j in range(student_layers)]


def resolve_layer_pairs(args, teacher, student) -> tuple[tuple[int, int], ...]:
    """(teacher layer, student layer) pairs from the config: explicit "t:s" strings, or "auto"."""
    if not args.uses_intermediate_loss:
        return ()
    family_for(teacher)  # the intermediate loss finds layers and norms through the family table
    family_for(student)
    teacher_layers, student_layers = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    requested = args.intermediate_layer_pairs or []
    if requested == ["auto"]:
        pairs = _auto_pairs(teacher_layers, student, student_layers)
    else:
        pairs = []
        for text in requested:
            try:
                t, s = (int(part) for part in str(text).split(":"))
            except ValueError as error:
                raise MinitronError(
                    f"Layer pair '{text}' is not of the form teacher:student",
                    fix='write pairs like "16:8", or use "auto"',
                ) from error
            pairs.append((t, s))
    bad = [f"{t}:{s}" for t, s in pairs if not (0 <= t < teacher_layers and 0 <= s < student_layers)]
    if bad:
        raise MinitronError(
            f"Layer pairs {', '.join(bad)} are out of range",
            f"the teacher has layers 0..{teacher_layers - 1} and the student 0..{student_layers - 1}",
            "fix the pairs or use intermediate_layer_pairs=['auto']",
        )
    if args.embedding_loss:
        pairs.append((EMBEDDINGS, EMBEDDINGS))
    return tuple(pairs)
