"""Command line: `prunescope analyze | inspect | report | demo | export`. Console output follows the original tool's."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of the whole command line; with `command`, that command's own parser alone, as
    `prunescope COMMAND` has it (start-up time counts: each parser argparse builds costs its gettext
    look-ups, a file search per message)."""
    formatter = _formatter()
    if command is not None:
        parser = argparse.ArgumentParser(prog=f"prunescope {command}", formatter_class=formatter)
        COMMANDS[command][1](parser)
        return parser
    parser = argparse.ArgumentParser(
        prog="prunescope", formatter_class=formatter,
        description="Exact structure analysis of pruned LLM checkpoints, read from the files: no GPU, "
                    "no model loading, no checkpoint code run.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, add_arguments) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=text, formatter_class=formatter))
    return parser


def _formatter():
    """argparse's formatter with the width given: left to find it, argparse imports shutil for it,
    which costs a tenth of a whole analysis's start-up. Asked once: argparse makes a formatter for
    every argument it adds."""
    try:
        width = os.get_terminal_size().columns - 2
    except OSError:
        width = 78
    return functools.partial(argparse.HelpFormatter, width=width)


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a model folder or checkpoint file, a Hub repo id org/name[@revision], "
                                     "or an hf://, s3://, gs:// or https:// URL")
    parser.add_argument("--base_model", "--base-model", dest="base_model", help="base model to compare with")
    parser.add_argument("--json", action="store_true", help="print model_structure.json to stdout instead")
    add_scan_arguments(parser)
    add_compute_arguments(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from .report.command import add_report_arguments as add  # the report package loads only for this command

    add(parser)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default="prunescope_demo", help="where to write (default: %(default)s)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from .export.command import add_export_arguments as add  # the export package loads only for this command

    add(parser)


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models_dir", "--models-dir", dest="models_dir",
                        help="folder with one model per entry (symlinks are followed); or give --model paths")
    parser.add_argument("--base_model", "--base-model", dest="base_model",
                        help="the unpruned model, for comparisons: a path, a Hub repo id or a URL")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default="baselines_analysis/",
                        help="where batch results go (default: %(default)s)")
    add_scan_arguments(parser)
    add_compute_arguments(parser)
    parser.add_argument("--merge_results", "--merge-results", dest="merge_results", action="store_true",
                        help="also write <output_dir>/models_summary.json from the analyses on disk")
    parser.add_argument("--force", action="store_true", help="re-analyse models whose analysis is up to date")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB", help="only entries matching")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip entries matching")
    parser.add_argument("--model", action="append", default=[], metavar="REF",
                        help="also analyse this model: a path, a Hub repo id org/name[@revision] or a URL")
    parser.add_argument("--report", action="store_true",
                        help="then write tables, plots and report.html under --output_dir (prunescope report)")


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sparsity", action="store_true",
                        help="read every tensor: nonzeros, N:M patterns, zeroed heads and channels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where --sparsity counts (auto: CUDA when torch sees one); the structure "
                             "analysis itself needs no device")
    parser.add_argument("--remote-scan", "--remote_scan", dest="remote_scan", action="store_true",
                        help="let --sparsity read the weights of remote models (all their bytes)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where --sparsity reads and counts: this machine's cores, or the workers of a "
                             "Ray cluster (pip install 'prunescope[ray]')")
    parser.add_argument("--address", metavar="auto|HOST:6379|ray://HOST:10001",
                        help="the Ray cluster for --executor ray (default: RAY_ADDRESS, else a local instance)")


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    dtypes = ("bf16", "fp16", "fp32", "fp8", "int8", "int4")  # compute.DTYPE_BITS (not imported: start-up time)
    group = parser.add_argument_group(
        "compute and memory", "FLOPs = 2 x MACs of every matrix product, as torch's FlopCounterMode counts an eager "
                              "forward (README: Compute and memory)")
    group.add_argument("--seq_len", "--seq-len", dest="seq_len", type=_positive, default=2048,
                       help="prefill tokens S (default: %(default)s; LLM-Pruner's MACs tables use 64)")
    group.add_argument("--context", type=_positive, default=2048,
                       help="decode: tokens already cached; also the KV-cache and memory context (default: %(default)s)")
    group.add_argument("--batch", type=_positive, default=1, help="sequences, for the KV cache and memory (default: 1)")
    group.add_argument("--kv_dtype", "--kv-dtype", dest="kv_dtype", choices=dtypes,
                       help="KV-cache precision (default: the model's own float dtype)")
    group.add_argument("--weight_dtype", "--weight-dtype", dest="weight_dtype", choices=dtypes,
                       help="also give the weights' bytes at this precision, and use it for memory")
    group.add_argument("--memory", type=_memory, metavar="SIZE",
                       help="memory available, e.g. 80GB or 80GiB: the largest context (and batch) that fits")
    group.add_argument("--last_logit", "--last-logit", dest="last_logit", action="store_true",
                       help="prefill computes logits for the last position only, as generate() does")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _memory(text: str) -> int:
    from .compute import parse_memory

    try:
        return parse_memory(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def compute_options(args):
    from .compute import ComputeOptions

    return ComputeOptions(seq_len=args.seq_len, context=args.context, batch=args.batch, kv_dtype=args.kv_dtype,
                          weight_dtype=args.weight_dtype, memory=args.memory, last_logit=args.last_logit)


COMMANDS = {
    "analyze": ("analyse every model under a folder (batch)", add_analyze_arguments),
    "inspect": ("analyse one model and print its per-layer table", add_inspect_arguments),
    "report": ("paper-ready tables, plots and an HTML report from the analyses and evaluation results",
               add_report_arguments),
    "demo": ("write the bundled demo models and analyse them", add_demo_arguments),
    "export": ("write a pruned model for llama.cpp (GGUF) or transformers, exactly", add_export_arguments),
}


def console_main() -> None:
    """The `prunescope` command (and `python -m prunescope`): main(), then the exit."""
    status = main()
    # The interpreter's last collections at exit walk every object still alive (the modules, the
    # analysis just written) looking for cycles: a fifth of a header-only run, and none of ours needs
    # finalising. gc.freeze() puts them out of that walk; they are released as at any exit.
    gc.freeze()
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    # An analysis makes many small short-lived objects and almost no reference cycles: the collector's
    # default (a pass every 700 allocations) costs a tenth of a header-only run. Passes stay, rarer.
    gc.set_threshold(50_000, 20, 20)
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `prunescope inspect ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


def _run(argv: list[str]) -> int:
    _utf8_console()
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "analyze")  # the original's invocation: flags only, no command
    if argv and argv[0] in COMMANDS:  # a command given: only its parser is built
        args = build_parser(argv[0]).parse_args(argv[1:])
        args.command = argv[0]
    else:
        args = build_parser().parse_args(argv)
    if args.command == "analyze":
        from .batch import run_batch

        if not args.models_dir and not args.model:
            print("prunescope analyze: error: give --models_dir, or --model PATH (repeatable), or both",
                  file=sys.stderr)
            return 2
        status = run_batch(args.models_dir, base_model=args.base_model, output_dir=args.output_dir,
                           merge=args.merge_results, force=args.force, include=args.include,
                           exclude=args.exclude, extra_models=args.model, sparsity=args.sparsity,
                           device=args.device, remote_scan=args.remote_scan, executor=args.executor,
                           address=args.address, options=compute_options(args))
        if args.report:
            from .report.command import run_report

            status = max(status, run_report(args.output_dir, models_dir=args.models_dir))
        return status
    if args.command == "report":
        from .report.command import report_from_args

        return report_from_args(args)
    if args.command == "inspect":
        return inspect_model(args.path, args.base_model, args.json, args.sparsity, args.device, args.remote_scan,
                             compute_options(args), args.executor, args.address)
    if args.command == "export":
        from .export.command import run_export

        return run_export(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.directory)
    build_parser().print_help()
    return 2


def inspect_model(path: str, base_model: str | None, as_json: bool, sparsity: bool = False,
                  device: str = "auto", remote_scan: bool = False, options=None, executor: str = "local",
                  address: str | None = None) -> int:
    from .compare import compare
    from .locate import locate, refuse_implicit_scan
    from .pipeline import analyse_reference, scan_options
    from .console import structure_summary
    from .schema import structure_to_dict
    from .tensors import CheckpointError

    try:
        base_location = locate(base_model) if base_model else None
        location = locate(path)
        refusal = refuse_implicit_scan([location, base_location]) if sparsity and not remote_scan else None
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 1
        scan = scan_options(device, executor, address)[0] if sparsity else None
        base = analyse_reference(base_location, scan=scan, options=options) if base_location else None
        analysis = analyse_reference(location, base.config if base else None, scan, options)
    except CheckpointError as error:
        print(f"error: {error.line()}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug of ours: one line, as the batch says it, never a traceback
        print(f"error: {path}: internal error {type(error).__name__}: {str(error)[:200]} (please report it with "
              "this line)", file=sys.stderr)
        return 1
    comparison = compare(base.structure, analysis.structure) if base else None
    if as_json:
        from .schema import comparison_to_dict

        data = structure_to_dict(analysis.structure)
        data["security_findings"] = [finding.line() for finding in analysis.findings]
        if comparison is not None:
            data["comparison"] = comparison_to_dict(comparison)
        print(json.dumps(data, indent=2))
        return 0
    print(structure_summary(analysis.structure, comparison, analysis.checkpoint.kind,
                            [finding.line() for finding in analysis.findings], analysis.checkpoint.path))
    return 0


def _utf8_console() -> None:
    # Status marks (✓ ⊘ ✗) must not crash a console that cannot show them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass
