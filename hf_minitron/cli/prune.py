"""`hf-minitron prune`: prune a model to a target shape, re-fit it, and save a folder plain transformers loads."""

from __future__ import annotations

import argparse
import copy

from ..data import build_calibration_set, check_text_source
from ..errors import MinitronError
from ..importance import ImportanceScores
from ..loading import load_model_and_tokenizer
from ..outputs import claim_output
from ..pruning import LAYER_SELECTIONS, PruningConfig, check_pruning_config, prune_model, save_pruned_model
from ..pruning.config import EXPERT_SELECTIONS, NEURON_SELECTIONS, TARGETS
from ..pruning.plan import block_accuracy_sizes, block_lm_loss_sizes
from ..reconstruction import ReconstructionConfig, reconstruct_model
from ..reconstruction.config import LAYER_CHOICES, SPAN_METHODS
from ..shapes import comparison_table, model_shape
from .common import add_data_args, add_model_args, add_output_args, require
from .importance import add_importance_args, compute_scores


def register(subparsers):
    parser = subparsers.add_parser("prune", help="prune a model to a target width and/or depth")
    add_model_args(parser)
    targets = parser.add_argument_group("targets (a target left out keeps that dimension)")
    for name in TARGETS:
        targets.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    targets.add_argument("--layer-selection", choices=LAYER_SELECTIONS, default="block_importance")
    targets.add_argument("--layers-to-drop", type=int, nargs="+", default=None, help="0-based layers (explicit)")
    targets.add_argument("--head-residual-merge", action="store_true", help="fold pruned heads into kept ones")
    targets.add_argument(
        "--expert-selection",
        choices=EXPERT_SELECTIONS,
        default="mass",
        help="how --num-experts chooses: router weight x expert output norm summed over all tokens (mass), "
        "averaged over the routed tokens (saliency, REAP), or routing frequency",
    )
    targets.add_argument(
        "--neuron-selection",
        choices=NEURON_SELECTIONS,
        default="energy",
        help="how --intermediate-size chooses: the energy each neuron writes, E[a^2] x ||down_proj column||^2 "
        "(energy), or its activation alone (activation, Minitron's)",
    )
    targets.add_argument("--pruning-config", default=None, help="a pruning_config.json instead of target flags")
    targets.add_argument(
        "--student", default=None, help="with a pipeline recipe as --config: the student to prune (if it has several)"
    )
    parser.add_argument("--scores", default=None, help="folder of saved importance scores (skips estimation)")
    add_data_args(parser)
    add_importance_args(parser)
    add_reconstruction_args(parser)
    add_output_args(parser)
    # A pipeline recipe as --config fills these (see recipe_options): the student it chose, and the
    # reconstruction settings that have no flag.
    parser.set_defaults(run=run, recipe_student=None, reconstruction_settings={})
    return parser


def add_reconstruction_args(parser) -> None:
    defaults = ReconstructionConfig()
    group = parser.add_argument_group("reconstruction (re-fitting the pruned weights on the calibration data)")
    group.add_argument(
        "--reconstruct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-fit each layer's attention and MLP output projections by least squares (default: on)",
    )
    group.add_argument("--reconstruction-damping", type=float, default=defaults.damping, help="ridge strength")
    group.add_argument(
        "--reconstruction-samples", type=int, default=None, help="calibration samples to fit on (default: all)"
    )
    group.add_argument("--span-method", choices=SPAN_METHODS, default=defaults.span_method)
    group.add_argument("--reconstruct-layers", choices=LAYER_CHOICES, default=defaults.layers)


def reconstruction_config_from_args(args) -> ReconstructionConfig | None:
    if not args.reconstruct:
        return None
    return ReconstructionConfig(
        **{
            "batch_size": args.batch_size,
            **getattr(args, "reconstruction_settings", {}),
            "damping": args.reconstruction_damping,
            "num_samples": args.reconstruction_samples,
            "span_method": args.span_method,
            "layers": args.reconstruct_layers,
        }
    )


def pruning_config_from_args(args) -> PruningConfig:
    flags = [name for name in (*TARGETS, "layers_to_drop") if getattr(args, name) is not None]
    if args.pruning_config:
        given = [f"--{name.replace('_', '-')}" for name in flags]
        if given:
            raise MinitronError(
                f"--pruning-config and {', '.join(given)} both set the targets",
                "one of them would silently override the other",
                "give the targets either in the pruning config or as flags",
            )
        return PruningConfig.from_pretrained(args.pruning_config)
    if not flags:
        raise MinitronError(
            "No pruning target was given",
            fix="pass at least one of --hidden-size, --intermediate-size, --num-attention-heads, "
            "--num-key-value-heads, --num-hidden-layers, --num-experts, --moe-intermediate-size, --layers-to-drop, "
            "or --pruning-config",
        )
    return PruningConfig(
        **{name: getattr(args, name) for name in TARGETS},
        layer_selection=args.layer_selection if args.layers_to_drop is None else "explicit",
        layers_to_drop=args.layers_to_drop,
        head_residual_merge=args.head_residual_merge,
        expert_selection=args.expert_selection,
        neuron_selection=args.neuron_selection,
    )


def run(args) -> None:
    if args.student is not None and args.recipe_student is None:
        raise MinitronError(
            "--student chooses a student of a pipeline recipe",
            fix="give the recipe as --config, or leave --student out",
        )
    require(args, "output")
    config = pruning_config_from_args(args)
    reconstruction = reconstruction_config_from_args(args)
    with claim_output(args.output, args.overwrite):  # a second writer into the same folder is refused now
        _prune(args, config, reconstruction)


def _prune(args, config: PruningConfig, reconstruction: ReconstructionConfig | None) -> None:
    scores = ImportanceScores.load(args.scores) if args.scores else None
    if scores is None or reconstruction is not None:
        require(args, "data")
        check_text_source(args.data)
    model, tokenizer = load_model_and_tokenizer(
        args.model, dtype=args.dtype, device_map=args.device_map, trust_remote_code=args.trust_remote_code
    )
    source, _ = check_pruning_config(model, config, scores)  # before any long computation
    if scores is None:
        layers = source["num_hidden_layers"]
        accuracy_sizes = block_accuracy_sizes(layers, [config])
        if accuracy_sizes and not args.downstream_task:
            raise MinitronError(
                "layer_selection 'downstream' needs a task",
                fix="pass --downstream-task path/to/winogrande.jsonl (or builtin:everyday-facts)",
            )
        args.block_sizes = sorted({*args.block_sizes, *block_lm_loss_sizes(layers, [config])})
        args.accuracy_block_sizes = sorted({*args.accuracy_block_sizes, *accuracy_sizes})
        scores = compute_scores(args, model, tokenizer)
    before = model_shape(model)
    # Reconstruction fits the student to the unpruned model, so it prunes a copy (twice the memory).
    student = prune_model(copy.deepcopy(model) if reconstruction else model, config, scores)
    report = None
    if reconstruction is not None:
        calibration = build_calibration_set(
            args.data,
            tokenizer,
            num_samples=args.reconstruction_samples or args.num_samples,
            seq_len=args.seq_len,
            packing=args.packing,
            text_column=args.text_column,
            dataset_config=args.dataset_config,
            split=args.split,
        )
        report = reconstruct_model(student, model, calibration, config=reconstruction)
        del model
    save_pruned_model(
        student,
        args.output,
        tokenizer=tokenizer,
        pruning_config=config,
        scores=scores,
        reconstruction=report,
        overwrite=args.overwrite,
    )
    print(comparison_table({"source": before, "pruned": model_shape(student)}))
    record = student.config.minitron_pruning
    if record["dropped_layers"]:
        print(f"Dropped layers: {record['dropped_layers']}")
    if report is not None:
        summary = record["reconstruction"]
        print(
            f"Reconstructed on {summary['tokens']} tokens in {report['seconds']} s: mean relative error of the "
            f"attention fits {summary['attention_error'][0]} → {summary['attention_error'][1]}, "
            f"MLP fits {summary['mlp_error'][0]} → {summary['mlp_error'][1]}"
        )
    print(f"Saved to {args.output} (loads with AutoModelForCausalLM.from_pretrained)")
