"""Arguments and behaviour shared by every command: YAML configs, model/data options, errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..errors import MinitronError
from ..loading import DEFAULT_TEACHER


def add_model_args(parser: argparse.ArgumentParser, dtype_default: str | None = "auto") -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_TEACHER,
        help=f"Hub id, local folder, .gguf file or builtin:NAME (default: {DEFAULT_TEACHER})",
    )
    group.add_argument(
        "--dtype",
        default=dtype_default,
        help=f"float32, bfloat16, float16 or auto (default: {dtype_default or 'float32'})",
    )
    group.add_argument("--device-map", default=None, help="e.g. auto, cuda:0, cpu (default: load on CPU)")
    group.add_argument("--trust-remote-code", action="store_true", help="run model code from the Hub (off by default)")


def add_data_args(parser: argparse.ArgumentParser, default: str | None = "builtin:python-docs") -> None:
    group = parser.add_argument_group("calibration data")
    group.add_argument(
        "--data",
        default=default,
        help="HF dataset id, local .txt/.jsonl/.parquet file or folder, or builtin:python-docs",
    )
    group.add_argument("--dataset-config", default=None, help="dataset configuration name")
    group.add_argument("--split", default="train")
    group.add_argument("--text-column", default=None, help="column holding the text (default: guessed)")
    group.add_argument("--num-samples", type=int, default=1024)
    group.add_argument("--seq-len", type=int, default=1024)
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument(
        "--no-packing",
        dest="packing",
        action="store_false",
        help="one padded sample per text instead of packed blocks of --seq-len tokens",
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", default=None, help="output folder (required)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder hf_minitron made")
    parser.add_argument("--config", default=None, help="YAML file whose keys set any of these options")


def read_config_file(config_path: str) -> dict:
    """A --config file's mapping, or an error naming what is wrong with the file."""
    path = Path(config_path)
    if not path.is_file():
        raise MinitronError(f"Config file '{config_path}' does not exist", fix="check the path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MinitronError(f"Config file '{config_path}' is not valid YAML", str(error).replace("\n", " ")) from error
    if not isinstance(values, dict):
        raise MinitronError(f"Config file '{config_path}' must hold a mapping of option: value")
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str], from_recipe=None) -> argparse.Namespace:
    """Options come from an optional YAML file first, then from flags (flags win), as TRL's parser does.

    The file is a mapping of this command's options or, for commands given ``from_recipe`` (a function
    ``(recipe, student) -> (options, settings without a flag)``), a pipeline recipe."""
    from ..pipeline import parse_recipe
    from .recipe_options import is_pipeline_recipe, option_value

    config_path = option_value(argv, "--config")
    if config_path:
        values = read_config_file(config_path)
        if is_pipeline_recipe(values):
            if from_recipe is None:
                raise MinitronError(
                    f"'{config_path}' is a pipeline recipe, and this command reads a file of its own options",
                    fix="run it as `hf-minitron run RECIPE -o DIR`, or give it to `prune` or `distill` as --config",
                )
            values, settings = from_recipe(parse_recipe(values), option_value(argv, "--student"))
            parser.set_defaults(**settings)
        known = {action.dest: action for action in parser._actions}
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(k for k in values if k not in known or k in ("help", "config"))
        if unknown:
            options = sorted(k for k in known if k not in ("help", "config"))
            raise MinitronError(
                f"Unknown key(s) in '{config_path}': {', '.join(unknown)}",
                f"this command accepts {', '.join(options)}",
            )
        for key, value in values.items():
            action = known[key]
            if value is not None and action.type is not None:
                try:
                    value = [action.type(v) for v in value] if isinstance(value, list) else action.type(value)
                except (TypeError, ValueError) as error:
                    expected = action.type.__name__
                    raise MinitronError(f"'{key}' in '{config_path}' must be {expected}, got {value!r}") from error
            if action.choices is not None and value is not None and value not in action.choices:
                raise MinitronError(
                    f"'{key}' in '{config_path}' is {value!r}",
                    f"the choices are {', '.join(map(str, action.choices))}",
                )
            values[key] = value
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [name for name in names if getattr(args, name) in (None, "")]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise MinitronError(f"Missing required option(s): {flags}", fix="give them as flags or in the --config file")
