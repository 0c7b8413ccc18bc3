"""`hf-minitron quantize` (torchao int8/int4/fp8) and `hf-minitron export-gguf` (llama.cpp)."""

from __future__ import annotations

from ..quantization import GGUF_TYPES, SCHEMES, export_gguf, quantize_model
from ..quantization.weights import folder_bytes
from .common import require


def register(subparsers):
    quantize = subparsers.add_parser("quantize", help="quantize a model folder's weights (int8/int4 on CPU, fp8 GPU)")
    quantize.add_argument("model_dir")
    quantize.add_argument("--scheme", choices=SCHEMES, default="int8")
    quantize.add_argument("--group-size", type=int, default=32, help="inputs per int4 scale")
    quantize.add_argument("--output", "-o", default=None, help="output folder (required)")
    quantize.add_argument("--overwrite", action="store_true")
    quantize.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    quantize.set_defaults(run=run_quantize)
    gguf = subparsers.add_parser("export-gguf", help="write a model folder as one GGUF file for llama.cpp")
    gguf.add_argument("model_dir")
    gguf.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default="F16")
    gguf.add_argument(
        "--embedding-type",
        choices=GGUF_TYPES,
        default=None,
        help="type of the token embedding and LM head (default: --type), e.g. F16 in a Q8_0 file",
    )
    gguf.add_argument("--output", "-o", default=None, help="the .gguf file to write (required)")
    gguf.add_argument("--no-tokenizer", dest="include_tokenizer", action="store_false")
    gguf.add_argument("--overwrite", action="store_true")
    gguf.add_argument(
        "--pre-tokenizer",
        default=None,
        help="llama.cpp pre-tokenizer name for a BPE tokenizer not recognised automatically (e.g. llama-bpe)",
    )
    gguf.add_argument("--config", default=None, help="YAML file whose keys set any of these options")
    gguf.set_defaults(run=run_export_gguf)
    return {"quantize": quantize, "export-gguf": gguf}


def run_quantize(args) -> None:
    require(args, "output")
    folder = quantize_model(args.model_dir, args.output, args.scheme, args.group_size, args.overwrite)
    before, after = folder_bytes(args.model_dir), folder_bytes(folder)
    print(f"{args.scheme}: {before} → {after} bytes of weights ({after / before:.2f}×); saved to {folder}")


def run_export_gguf(args) -> None:
    require(args, "output")
    path = export_gguf(
        args.model_dir,
        args.output,
        args.gguf_type,
        include_tokenizer=args.include_tokenizer,
        overwrite=args.overwrite,
        pre_tokenizer=args.pre_tokenizer,
        embedding_type=args.embedding_type,
    )
    print(
        f"Wrote {path} ({path.stat().st_size} bytes, {args.gguf_type}); "
        f"transformers reads it with from_pretrained(folder, gguf_file='{path.name}')"
    )
