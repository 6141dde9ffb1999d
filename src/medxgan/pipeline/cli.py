"""`medxgan <step>`: the pipeline's steps as commands, each runnable by hand or from Snakemake.

The parser is built from the steps' registry (`medxgan.pipeline.steps`): each step's name, help
and arguments are declared once, beside its function. A step with settings takes them either as
JSON (`--settings`, what the Snakefile passes) or from a config file and a dataset name
(`--config config/config.yaml --dataset synthetic-mri`).

Parsing imports nothing heavy (no torch, no plotting), so `--help` answers at once; each step loads
its modules when it runs.

A bad input (a wrong setting, file or argument) stops a step with one line on stderr,
`medxgan: error: ...`, and exit status 2, as a bad argument does; `--debug` shows its traceback.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys

from medxgan.config import ConfigError
from medxgan.pipeline import steps  # noqa: F401  (registers every step)
from medxgan.pipeline.context import SETTINGS_ARGUMENTS, STEPS, Context
from medxgan.shards import ShardError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxgan",
        description="medXGAN: explain a binary medical image classifier through a generative latent space, "
                    "and compare with Grad-CAM and Integrated Gradients. Each subcommand is one pipeline step; "
                    "`snakemake --cores N` runs them all in order.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a bad input's error too")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for step in STEPS.values():
        command = sub.add_parser(step.name, help=step.help, description=step.help)
        for argument in (*step.arguments, *(SETTINGS_ARGUMENTS if step.settings else ())):
            command.add_argument(*argument.flags, **argument.options)
    return parser


# glibc's mallopt parameters (malloc.h), and the largest value it takes (a C int)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
LARGEST_MALLOPT_VALUE = 2**31 - 1


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for reuse. By default it maps every large block afresh
    and unmaps it when freed, and trims the heap's free top, so the same activations, allocated at
    every training or tuning step, are page-faulted in again each time (docs/speed.md). Here every
    block comes from the heap, which is trimmed only above 2 GB of free memory; a step's memory
    stays near its peak. A no-op where the C library is not glibc."""
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, LARGEST_MALLOPT_VALUE)


def run(args: argparse.Namespace) -> None:
    keep_freed_memory()
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    STEPS[args.step].function(Context(args))


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input, reported in one line without a traceback. Imported only
    once a step failed (their modules load torch)."""
    from medxgan.bundle import BundleError
    from medxgan.data.download import DataSourceError
    from medxgan.data.manifest import ManifestError
    from medxgan.files import InputFileError

    return ConfigError, ManifestError, ShardError, DataSourceError, InputFileError, BundleError, FileNotFoundError


def one_line(message: str) -> str:
    """A multi-line message (the schema's list of invalid keys) as one line."""
    head, *rest = [line.strip() for line in message.splitlines() if line.strip()] or [""]
    return " ".join([head, "; ".join(rest)]) if rest else head


BAD_INPUT = 2  # argparse's status for a bad argument


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Exception as error:
        if args.debug or not isinstance(error, _bad_input_errors()):
            raise
        print(f"medxgan: error: {one_line(str(error))}", file=sys.stderr)
        return BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
