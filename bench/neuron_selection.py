"""Which MLP neurons to keep when the re-fit follows: the library's activation importance against rankings
that know the weight each neuron writes through.

The built-in SmolLM2-135M-Instruct teacher loses MLP neurons only (``--sizes``, per layer), chosen by

- ``activation``: Minitron's activation importance (L2 over samples of mean |a| per sample;
                  ``PruningConfig(neuron_selection="activation")``)
- ``energy``:     the output energy a neuron carries, E[a²] · ||down_proj column||² (a structured Wanda
                  score; the library's default, ``neuron_selection="energy"``)
- ``weighted``:   the library's activation score times the down_proj column norm
- ``obs``:        structured optimal brain surgeon (the ZipLM / SlimGPT family): per layer, greedily remove
                  the neuron whose loss, re-fitting the others, costs least — ||w_j||² / [H⁻¹]_jj with H the
                  Gram matrix of the neuron activations — updating H⁻¹ and the weights after each removal

then left as pruned and re-fitted by least squares (the library's default settings). Perplexity on
held-out documentation and on Tiny Shakespeare, never calibrated on. Calibration: documentation and
dolly pairs, as ``recovery.py``; with ``--calibration "docs+dolly|generated"`` half of its samples are
the teacher's own answers to the library's built-in prompts instead.

    .venv/bin/python bench/neuron_selection.py --sizes 1024 --rankings activation,energy,obs
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_minitron import (
    PruningConfig,
    ReconstructionConfig,
    build_calibration_set,
    builtin_teacher,
    estimate_importance,
    prune_model,
    reconstruct_models,
)
from hf_minitron.evaluation.perplexity import perplexity
from hf_minitron.families import family_for, get_module
from hf_minitron.layers import decoder_layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_text import mixed_texts, with_teacher_answers
from recovery import HELD_OUT

RANKINGS = ("activation", "energy", "weighted", "obs")
LIBRARY_SELECTIONS = ("activation", "energy")  # PruningConfig.neuron_selection values


def down_projections(model) -> list[torch.nn.Linear]:
    """Each layer's MLP output projection (down_proj), the linear layer that reads the neurons."""
    name = family_for(model).neuron_activation_input
    return [get_module(layer, name) for layer in decoder_layers(model)]


def neuron_grams(model, calibration) -> list[torch.Tensor]:
    """Per layer, the fp64 Gram matrix of the down_proj inputs over every calibration token."""
    layers = decoder_layers(model)
    size = model.config.intermediate_size
    grams = [torch.zeros(size, size, dtype=torch.float64) for _ in layers]

    def hook(index):
        def add(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            grams[index].add_(x.t() @ x)

        return add

    handles = [down.register_forward_pre_hook(hook(i)) for i, down in enumerate(down_projections(model))]
    decoder = get_module(model, family_for(model).decoder)  # no LM head: only the layers' inputs are needed
    try:
        with torch.no_grad():
            for batch in calibration.batches(8):
                decoder(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return grams


def obs_order(gram: torch.Tensor, weight: torch.Tensor, remove: int, damping: float = 0.01) -> torch.Tensor:
    """Scores whose top-k are the neurons greedy structured OBS keeps: the removal step of each removed
    neuron, and more than any of those for the survivors."""
    n = gram.shape[0]
    inverse = torch.linalg.inv(gram + damping * gram.diagonal().mean() * torch.eye(n, dtype=gram.dtype))
    w = weight.double().clone()
    alive = torch.ones(n, dtype=torch.bool)
    scores = torch.zeros(n)
    for step in range(remove):
        cost = (w * w).sum(0) / inverse.diagonal()
        cost[~alive] = float("inf")
        j = int(cost.argmin())
        # Removing neuron j and re-fitting the rest: the OBS update of the weights and of H⁻¹.
        w -= torch.outer(w[:, j], inverse[j, :]) / inverse[j, j]
        inverse -= torch.outer(inverse[:, j], inverse[j, :]) / inverse[j, j]
        alive[j] = False
        scores[j] = step
    scores[alive] = remove + 1
    return scores


def ranked(scores, teacher, grams, ranking: str, remove: int):
    """Scores whose ``neurons`` rank the neurons as ``ranking`` does (read by neuron_selection "activation")."""
    rows = []
    for index, down in enumerate(down_projections(teacher)):
        weight = down.weight.detach().double()
        if ranking == "weighted":
            rows.append(scores.neurons[index] * weight.norm(dim=0).float())
        else:
            rows.append(obs_order(grams[index], weight, remove))
    result = copy.deepcopy(scores)
    result.neurons = torch.stack(rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024", help="comma-separated MLP sizes to prune to (teacher: 1536)")
    parser.add_argument("--rankings", default="activation,energy,weighted,obs")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument(
        "--calibration",
        choices=("docs+dolly", "docs+dolly|generated"),
        default="docs+dolly",
        help="documentation and dolly pairs; or half of those samples and half the teacher's own answers",
    )
    parser.add_argument("--out", default="bench/out/neuron_selection", help="where the teacher's answers go")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, tokenizer = builtin_teacher()
    teacher.eval()
    calibration = build_calibration_set(mixed_texts(), tokenizer, num_samples=args.calibration_samples, seq_len=256)
    if args.calibration == "docs+dolly|generated":
        samples = args.calibration_samples  # half of them the teacher's answers to as many prompts
        calibration = with_teacher_answers(calibration, samples, teacher, tokenizer, Path(args.out), prompts=samples)
    scores = estimate_importance(teacher, calibration_data=calibration, progress=False)
    grams = neuron_grams(teacher, calibration)

    def held_out(model) -> str:
        values = [
            perplexity(model, tokenizer, source, seq_len=256, max_tokens=4096, progress=False).perplexity
            for source in HELD_OUT.values()
        ]
        return " / ".join(f"{v:.2f}" for v in values)

    print(f"teacher: docs / Tiny Shakespeare {held_out(teacher)}", flush=True)
    print("| MLP size | ranking | ranking time | pruned | re-fitted |\n|---|---|---|---|---|", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        for ranking in args.rankings.split(","):
            start = time.time()
            if ranking in LIBRARY_SELECTIONS:
                chosen, selection = scores, ranking
            else:  # the ranking lands in chosen.neurons, which the "activation" selection reads as it is
                chosen, selection = (
                    ranked(scores, teacher, grams, ranking, teacher.config.intermediate_size - size),
                    "activation",
                )
            seconds = time.time() - start
            config = PruningConfig(intermediate_size=size, neuron_selection=selection)
            student = prune_model(copy.deepcopy(teacher), config, chosen)
            pruned = held_out(student)
            reconstruct_models(teacher, [student], calibration, config=ReconstructionConfig(), progress=False)
            print(f"| {size} | {ranking} | {seconds:.1f} s | {pruned} | {held_out(student)} |", flush=True)


if __name__ == "__main__":
    main()
