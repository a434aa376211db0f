"""`prunescope export MODEL --to gguf|hf|hf-padded --output PATH`: the command line of the export."""

from __future__ import annotations

import sys

TARGETS = ("gguf", "hf", "hf-padded")


def add_export_arguments(parser) -> None:
    parser.add_argument("path", help="the pruned model: a folder or a checkpoint file (never modified)")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="gguf: llama.cpp (per-layer sizes kept); hf: a transformers folder (uniform layers); "
                             "hf-padded: a transformers folder padded back to the base's sizes (exact, no savings)")
    parser.add_argument("--output", required=True, help="the folder (hf) or .gguf file to write; must not exist")
    parser.add_argument("--base_model", "--base-model", dest="base_model",
                        help="the unpruned model: which layers were removed, the sizes to pad to, a config")
    parser.add_argument("--tokenizer", help="folder with the HF tokenizer files (default: the model's folder)")
    parser.add_argument("--dtype", choices=("f32", "f16", "bf16"), help="element type written (default: the source's)")
    parser.add_argument("--copy", action="store_true", help="hf: copy safetensors weights instead of linking them")


def run_export(args) -> int:
    from ..tensors import CheckpointError
    from .hf import CLI_DTYPES
    from .source import load_source

    dtype = CLI_DTYPES[args.dtype] if args.dtype else None
    try:
        source = load_source(args.path, args.base_model)
        if args.to == "hf":
            from .hf import export_hf

            lines = export_hf(source, args.output, copy=args.copy, dtype=dtype, tokenizer=args.tokenizer)
        elif args.to == "hf-padded":
            from .padded import export_padded

            lines = export_padded(source, args.output, dtype=dtype, tokenizer=args.tokenizer)
        else:
            from .gguf import export_gguf

            lines = export_gguf(source, args.output, dtype=dtype, tokenizer=args.tokenizer)
    except CheckpointError as error:
        print(f"error: {error.line()}", file=sys.stderr)
        return 1
    except OSError as error:  # the output's folder missing or not writable: nothing was left behind
        print(f"error: {args.output}: cannot write: {error.strerror or error} (choose another --output)", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"error: --to {args.to} needs the `{error.name}` package (pip install 'prunescope[export]')",
              file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
