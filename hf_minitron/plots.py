"""PNG plots: per-layer importance, block-removal curves, and training curves (matplotlib, no display)."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def _pyplot():
    import matplotlib

    # A font cache written by another environment (one since deleted, sharing ~/.cache/matplotlib) lacks
    # matplotlib's bundled math fonts: the log axes' tick labels then log a "findfont" warning per font,
    # each falling back to DejaVu Sans, which draws these plots the same.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_importance(scores, path: str | os.PathLike) -> Path:
    """Block importance per layer, and the spread of head and neuron scores per layer."""
    plt = _pyplot()
    layers = list(range(scores.num_layers))
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.8))
    axes[0].bar(layers, scores.block_importance.tolist(), color="tab:blue")
    axes[0].set_ylabel("block importance\n1 − cos(in, out)")
    for ax, values, label in ((axes[1], scores.heads, "head score"), (axes[2], scores.neurons, "neuron score")):
        ax.plot(layers, values.mean(1).tolist(), label="mean", color="tab:orange")
        ax.fill_between(
            layers,
            values.min(1).values.tolist(),
            values.max(1).values.tolist(),
            alpha=0.25,
            color="tab:orange",
            label="min–max",
        )
        ax.set_ylabel(label)
        ax.set_yscale("log")  # a few outlier units dwarf the rest on a linear scale
        ax.legend(loc="upper left", fontsize=8)
    for ax in axes:
        ax.set_xlabel("layer")
    title = scores.metadata.get("model", "")
    fig.suptitle(f"Importance per layer {('— ' + title) if title else ''}".strip())
    return _save(fig, path)


def plot_block_removal(scores, path: str | os.PathLike) -> Path | None:
    """LM loss and downstream accuracy against the first skipped layer, one line per block size."""
    panels = [
        (name, curves, base)
        for name, curves, base in (
            ("LM loss", scores.block_lm_loss, scores.base_lm_loss),
            (
                f"accuracy ({scores.metadata.get('downstream_task') or 'task'})",
                scores.block_accuracy,
                scores.base_accuracy,
            ),
        )
        if curves
    ]
    if not panels:
        return None
    plt = _pyplot()
    # Shared x: an LM-loss curve of the tied blocks only lines up with the accuracy curve of all of them.
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False, sharex=True)
    for ax, (name, curves, base) in zip(axes[:, 0], panels, strict=True):
        for k, values in sorted(curves.items()):
            # NaN: LM loss measured only for the blocks tied in accuracy (the downstream selection's tie-break)
            partial = " (blocks tied in accuracy)" if values.isnan().any() else ""
            ax.plot(range(len(values)), values.tolist(), marker="o", ms=3, label=f"{k} layers removed{partial}")
        if base is not None:
            ax.axhline(base, color="gray", ls="--", lw=1, label="no layer removed")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("first removed layer")
    fig.suptitle("Removing one contiguous block of layers")
    return _save(fig, path)


def plot_training_curves(
    log_history: list[dict],
    path: str | os.PathLike,
    keys: tuple[str, ...] = ("loss", "kl", "ce", "intermediate", "eval_loss", "eval_student_lm_loss"),
) -> Path | None:
    """Every logged loss component against the training step (from a Trainer's ``state.log_history``)."""
    series = {key: [(h["step"], h[key]) for h in log_history if key in h and "step" in h] for key in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_search(results: list[dict], path: str | os.PathLike) -> Path | None:
    """Eval LM loss of each searched candidate against its parameter count; the winner highlighted."""
    if not results:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    params = [r["params"] / 1e6 for r in results]
    losses = [r["eval_lm_loss"] for r in results]
    ax.scatter(params, losses, color="tab:blue")
    best = min(range(len(results)), key=losses.__getitem__)
    ax.scatter([params[best]], [losses[best]], color="tab:red", s=80, label=f"winner: {results[best]['name']}")
    for r, x, y in zip(results, params, losses, strict=True):
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("eval LM loss after light distillation")
    ax.legend(fontsize=8)
    return _save(fig, path)
